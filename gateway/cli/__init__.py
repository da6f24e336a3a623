"""The ``ttc-gateway`` command: ``serve``, ``keys``, ``check-config``, ``bench``."""
