"""Images: what `docker pull alpine` fetches, and where it is kept.

`reference.py` reads a name such as `alpine:3.19`; `manifests.py` says what the JSON
documents of an image hold; `registry.py` pulls one over the registry HTTP API v2;
`credentials.py` keeps `minicontainer login`'s logins.
"""
