"""Back ends that do the work behind the console: Azure (through the Azure SDKs) and the local
runtime. They are the only code that imports cloud SDKs or talks to the runtime; they take and
return plain dataclasses, know nothing of Django requests, and raise ProviderError.

A workspace row names its provider (`Workspace.provider`), so Azure and local workspaces live
side by side; services pick the back end per workspace with `for_workspace`
(settings.OPSPORTAL_PROVIDERS names each back end's class).
"""

from opsportal.providers.base import ProviderError, for_workspace

__all__ = ["ProviderError", "for_workspace"]
