"""A stateful stand-in for the Azure services the console calls (ARM, Microsoft Entra token
issuing, Cost Management, Key Vault secrets, the endpoints' data planes), reached over TLS
through the same SDK clients and settings as real Azure. See BEHAVIOUR.md."""
