"""Layer 2: the wire and content formats that the client and the API server share. Pure functions, no I/O
beyond reading a file to hash it; the only client code the server imports (``tests/api_server/test_layers``).

- :mod:`.uri`: ``sha1://`` URIs; :mod:`.hashing`: SHA-1 of bytes, streams and files;
- :mod:`.serialization`: canonical JSON, ``.npy``, safe pickles;
- :mod:`.keys`: Ed25519 key handling; :mod:`.request_signing`: the signed-request scheme;
- :mod:`.mutable_key`, :mod:`.feed_format`, :mod:`.task_format`: the grammars of mutables, feeds and tasks;
- :mod:`.owner_proof`: what the server's owner sends to prove it can read the owner-token file;
- :mod:`.hosts`: which host names are this machine's own.
"""
