"""Whether the Hugging Face hub answers, asked once per process with a short timeout.

Offline, transformers and huggingface_hub retry for close to a minute before they fail; a hub id
is then looked up in the local Hugging Face cache only, which fails (or loads) at once."""

from __future__ import annotations

import functools
import os
import ssl
import urllib.error
import urllib.request

PROBE_TIMEOUT_S = 5.0


def hub_endpoint() -> str:
    """The hub's address: `HF_ENDPOINT` when set, else huggingface_hub's default."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


@functools.cache
def hub_reachable() -> bool:
    """False under HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE or when the endpoint gives no answer within
    PROBE_TIMEOUT_S (proxy settings in the environment are honoured); any HTTP answer, or a TLS
    handshake that fails, counts as reachable."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(hub_endpoint(), method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return True
    except urllib.error.URLError as err:  # a TLS failure still means an answer: the hub's own client
        return isinstance(err.reason, ssl.SSLError)  # may trust other certificates (REQUESTS_CA_BUNDLE)
    except (OSError, ValueError):
        return False
    return True
