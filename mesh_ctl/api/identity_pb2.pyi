from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SignRequest(_message.Message):
    __slots__ = ("csr", "token", "current_chain", "proof")
    CSR_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    csr: bytes
    token: str
    current_chain: bytes
    proof: bytes
    def __init__(self, csr: _Optional[bytes] = ..., token: _Optional[str] = ..., current_chain: _Optional[bytes] = ..., proof: _Optional[bytes] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("certificate", "chain", "trust_bundle", "not_after", "session")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    certificate: bytes
    chain: bytes
    trust_bundle: bytes
    not_after: int
    session: str
    def __init__(self, certificate: _Optional[bytes] = ..., chain: _Optional[bytes] = ..., trust_bundle: _Optional[bytes] = ..., not_after: _Optional[int] = ..., session: _Optional[str] = ...) -> None: ...
