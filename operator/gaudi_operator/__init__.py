"""Gaudi Scale Starter: a kopf operator for distributed PyTorch training on Intel Gaudi 3."""

import sys

# The operator talks to the API server through its own JSON client (clients/kube.py) and
# needs neither Kubernetes client library; the image installs neither. kopf imports both
# whenever they are installed (a developer's venv has them): to recognise their model
# objects in kopf.adopt() and the like, which the operator never calls with one, and, when
# its default registry is created, to offer their logins, which our own login replaces
# (clients/kopf_session.py). That is about 50 MiB of resident memory. So kopf is imported
# and its registry created with them hidden (None in sys.modules makes an import raise
# ImportError), then they are put back for whoever else wants them (tests, dev tools).
_CLIENT_LIBRARIES = (
    "kubernetes",
    "kubernetes.client",
    "kubernetes_asyncio",
    "kubernetes_asyncio.client",
)


def _import_kopf_without_client_libraries() -> None:
    if "kopf" in sys.modules:
        return
    saved = {name: sys.modules.get(name) for name in _CLIENT_LIBRARIES}
    sys.modules.update(dict.fromkeys(_CLIENT_LIBRARIES))
    try:
        import kopf

        kopf.get_default_registry()
    except ImportError:
        pass  # kopf is the operator extra's; the CRD models alone do not need it
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module


_import_kopf_without_client_libraries()
