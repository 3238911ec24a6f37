"""The cloud specialization service (`loragen serve`)."""

from .app import (ServiceConfig, Specializer, add_api_key, create_app, hash_api_key, load_api_keys,
                  load_service_config, running, serve)
from .store import BundleStore, bundle_id

__all__ = ["BundleStore", "ServiceConfig", "Specializer", "add_api_key", "bundle_id", "create_app", "hash_api_key",
           "load_api_keys", "load_service_config", "running", "serve"]
