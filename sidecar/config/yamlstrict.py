"""Safe YAML loading that refuses duplicate keys instead of silently keeping the last one."""

from __future__ import annotations

import yaml
from yaml import YAMLError

__all__ = ["YAMLError", "load_all"]

# libyaml's parser when PyYAML was built with it (its wheels are), else the Python one.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    pass


def load_all(text: str) -> list[object]:
    return list(yaml.load_all(text, Loader=_Loader))


def _construct_mapping(
    loader: _Loader, node: yaml.MappingNode, deep: bool = False
) -> dict[object, object]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    mapping: dict[object, object] = loader.construct_mapping(node, deep=deep)
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
