"""S3 for DuckDB (DESIGN §7): the httpfs extension from its pinned wheel (these machines cannot reach
DuckDB's extension server) with an in-memory secret built from the storage settings; if httpfs
cannot load, DuckDB reads through the storage provider's fsspec filesystem instead.

Credentials come from the standard AWS chain and go only into the in-memory secret: never into view
SQL, logs or files.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

import duckdb

from aperio_assets.config import S3Settings
from aperio_assets.sqlutil import quote_literal
from aperio_assets.storage import S3Storage

log = logging.getLogger(__name__)
SECRET_NAME = "aperio_s3"


def httpfs_extension_path() -> str:
    import duckdb_extension_httpfs

    root = os.path.join(os.path.dirname(duckdb_extension_httpfs.__file__), "extensions")
    path = os.path.join(root, f"v{duckdb.__version__}", "httpfs.duckdb_extension")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no httpfs extension for DuckDB {duckdb.__version__} in {root} "
            "(duckdb and duckdb-extension-httpfs must be the same version)"
        )
    return path


def _secret_sql(settings: S3Settings) -> str:
    import botocore.session

    options = ["TYPE s3", f"REGION {quote_literal(settings.region)}"]
    credentials = botocore.session.get_session().get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        options += [f"KEY_ID {quote_literal(frozen.access_key)}", f"SECRET {quote_literal(frozen.secret_key)}"]
        if frozen.token:
            options.append(f"SESSION_TOKEN {quote_literal(frozen.token)}")
    if settings.endpoint_url:
        endpoint = urlparse(settings.endpoint_url)
        options += [
            f"ENDPOINT {quote_literal(endpoint.netloc)}",
            "URL_STYLE 'path'",
            f"USE_SSL {'true' if settings.use_ssl else 'false'}",
        ]
    return f"CREATE OR REPLACE SECRET {SECRET_NAME} ({', '.join(options)})"


def enable_s3(con: duckdb.DuckDBPyConnection, storage: S3Storage, *, method: str = "auto") -> str:
    """Make ``s3://`` readable in ``con``; returns the method used: ``httpfs`` or ``fsspec``."""
    if method in ("auto", "httpfs"):
        try:
            con.execute(f"LOAD {quote_literal(httpfs_extension_path())}")
            con.execute(_secret_sql(storage.settings))
            return "httpfs"
        except (duckdb.Error, FileNotFoundError, ImportError) as exc:
            if method == "httpfs":
                raise
            log.warning("httpfs could not load (%s); DuckDB reads S3 through fsspec instead", type(exc).__name__)
    con.register_filesystem(storage.fs)
    return "fsspec"
