from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Item(_message.Message):
    __slots__ = ("sku", "name", "price_cents", "stars")
    SKU_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    STARS_FIELD_NUMBER: _ClassVar[int]
    sku: str
    name: str
    price_cents: int
    stars: float
    def __init__(self, sku: _Optional[str] = ..., name: _Optional[str] = ..., price_cents: _Optional[int] = ..., stars: _Optional[float] = ...) -> None: ...

class ListReply(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("sku",)
    SKU_FIELD_NUMBER: _ClassVar[int]
    sku: str
    def __init__(self, sku: _Optional[str] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("text", "max_price_cents", "page")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    text: str
    max_price_cents: int
    page: Page
    def __init__(self, text: _Optional[str] = ..., max_price_cents: _Optional[int] = ..., page: _Optional[_Union[Page, _Mapping]] = ...) -> None: ...

class Page(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("repeat",)
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    repeat: int
    def __init__(self, repeat: _Optional[int] = ...) -> None: ...

class Rating(_message.Message):
    __slots__ = ("stars", "comment")
    STARS_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    stars: int
    comment: str
    def __init__(self, stars: _Optional[int] = ..., comment: _Optional[str] = ...) -> None: ...

class RateRequest(_message.Message):
    __slots__ = ("sku", "rating")
    SKU_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    sku: str
    rating: Rating
    def __init__(self, sku: _Optional[str] = ..., rating: _Optional[_Union[Rating, _Mapping]] = ...) -> None: ...
