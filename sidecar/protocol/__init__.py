"""Sans-I/O protocol code: parsers and serializers that never touch a socket."""
