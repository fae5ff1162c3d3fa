"""Serving: the Ray Serve app (`adaray.serving.app`, deployed from serve/config.yaml) and what
it needs that is not Ray Serve.

- `config`: `ServeConfig` (the app's `args:`) and `read_serve_config` (`adaray serve`);
- `checks`: request checks that refuse with an HTTP status (`adaray.errors.RequestError`);
- `sources`: which model serves a task (champion alias, configured source, shipped fallback)
  and loading it;
- `client`: `post_fuse`, the client of POST /fuse;
- `app`: the deployments. Importing it imports Ray Serve; the other modules do not.

Decoding uses `adaray.data.decode_image` and fusing `adaray.fusion.fuse_batch`, the same code
as `adaray fuse`, so a served result equals the local one for the same model.
"""

from adaray.errors import RequestError
from adaray.serving.client import post_fuse
from adaray.serving.config import ServeConfig, ServeSpec, read_serve_config

__all__ = ["RequestError", "ServeConfig", "ServeSpec", "post_fuse", "read_serve_config"]
