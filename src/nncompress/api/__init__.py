"""The abstract compression API (the spec of ``nncf.api.compression``) and statistics."""
