"""Storage backends. Cloud SDKs are imported only when a storage of their type is opened,
so the CLI and the TUI start fast."""

from __future__ import annotations

from insite_console.storage.base import ObjectInfo, Storage

__all__ = ["ObjectInfo", "Storage", "open_storage"]


def open_storage(name: str, settings: dict) -> Storage:
    """Build the backend for one `[storage.NAME]` table of config.toml (already validated)."""
    kind = settings["type"]
    if kind == "local":
        from insite_console.storage.local import LocalStorage

        return LocalStorage(name, settings["path"])
    if kind == "s3":
        from insite_console.storage.s3 import S3Storage

        return S3Storage(name, settings)
    if kind == "gcs":
        from insite_console.storage.gcs import GCSStorage

        return GCSStorage(name, settings)
    if kind == "azure":
        from insite_console.storage.azure import AzureStorage

        return AzureStorage(name, settings)
    raise ValueError(f"unknown storage type {kind!r}")
