"""Causes named by a model server's own log: vLLM refusing its configuration, the hub refusing
the model, a full model cache. Each maps the text the real program prints to the ConfigMap key,
Secret or volume to change.

The texts, and where they come from:
- vLLM 0.32.0 (the image the manifests pin): vllm/config/model.py `_get_and_verify_max_len`
  ("User-specified max_model_len (N) is greater than the derived max_model_len (key=M ..."),
  ModelConfig's quantization check ("Quantization method specified in the model config (gptq)
  does not match ... (awq)", "Unknown quantization method: X. Must be one of [...]"),
  vllm/config/vllm.py ("The quantization method X is not supported for the current GPU. Minimum
  capability: 80. Current capability: 75."), vllm/config/parallel.py ("World size (2) is larger
  than the number of available GPUs (1) in this node."). vLLM's configs are pydantic
  dataclasses, so these arrive wrapped: "ValidationError: 1 validation error for ModelConfig /
  Value error, ...".
- huggingface_hub (utils/_http.py hf_raise_for_status): GatedRepoError "Cannot access gated repo
  for url ..." with the hub's own sentence ("... is restricted. You must have access to it and be
  authenticated to access it. Please log in." without a token, "... not in the authorized list"
  with one), RepositoryNotFoundError "Repository Not Found for url", "Invalid credentials in
  Authorization header"; file_download.py "Not enough free disk space to download the file."
- Archon's vllm-start.py (manifests/model-server): one "archon: error:" line per cause.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

CONFIGMAP = "the ConfigMap vllm-config (manifests/model-server/configmap.yaml)"


@dataclass
class Cause:
    title: str
    fix: str
    evidence: list[str]  # the log line that says so, and what was measured


def _line(log: str, pattern: re.Pattern[str]) -> str:
    return next(
        (x.strip() for x in reversed(log.splitlines()) if pattern.search(x)),
        "",
    )


MAX_LEN = re.compile(
    r"User-specified max_model_len \((\d+)\) is greater than the derived max_model_len "
    r"\(([\w.]+)=([\d.]+)"
)
QUANT_MISMATCH = re.compile(
    r"Quantization method specified in the model config \((\w+)\) does not match the "
    r"quantization method specified in the `quantization` argument \((\w+)\)"
)
QUANT_UNKNOWN = re.compile(r"Unknown quantization method: (\S+?)\. Must be one of \[([^\]]*)\]")
QUANT_GPU = re.compile(
    r"The quantization method (\S+) is not supported for the current GPU\. Minimum "
    r"capability: (\d+)\. Current capability: (\d+)"
)
WORLD_SIZE = re.compile(
    r"World size \((\d+)\) is larger than the number of available GPUs \((\d+)\)"
)


def vllm_config(log: str, settings: dict[str, str]) -> Cause | None:
    """vLLM refused the engine arguments built from the ConfigMap."""
    if m := MAX_LEN.search(log):
        wanted, key, limit = m.group(1), m.group(2), int(float(m.group(3)))
        return Cause(
            "max_model_len above the model's context",
            f"In {CONFIGMAP} set max_model_len to {limit} or less (now {wanted}): the model's "
            f"config.json says {key}={limit}.",
            [_line(log, MAX_LEN)],
        )
    if m := QUANT_MISMATCH.search(log):
        checkpoint, given = m.group(1), m.group(2)
        return Cause(
            "quantization does not match the checkpoint",
            f"In {CONFIGMAP} set quantization to {checkpoint} (now {given}): the checkpoint of "
            f"{settings.get('llm_model', 'llm_model')} is quantized with {checkpoint}.",
            [_line(log, QUANT_MISMATCH)],
        )
    if m := QUANT_UNKNOWN.search(log):
        return Cause(
            "unknown quantization method",
            f"In {CONFIGMAP} set quantization to the checkpoint's method (now "
            f"{m.group(1)!r}); vLLM knows: {m.group(2)[:200]}",
            [_line(log, QUANT_UNKNOWN)],
        )
    if m := QUANT_GPU.search(log):
        method, need, have = m.group(1), int(m.group(2)), int(m.group(3))
        return Cause(
            f"{method} needs a newer GPU",
            f"{method} needs compute capability {need // 10}.{need % 10}, this GPU has "
            f"{have // 10}.{have % 10}: in {CONFIGMAP} choose a quantization (and llm_model "
            "checkpoint) this GPU supports, or schedule the pod on a newer GPU (nodeSelector).",
            [_line(log, QUANT_GPU)],
        )
    if m := WORLD_SIZE.search(log):
        world, gpus = int(m.group(1)), int(m.group(2))
        return Cause(
            "tensor_parallel_size larger than the GPUs",
            f"In {CONFIGMAP} set tensor_parallel_size to {gpus} (now "
            f"{settings.get('tensor_parallel_size', world)}), or give the vllm and preflight "
            f"containers nvidia.com/gpu: {world} (manifests/model-server/deployment.yaml) on a "
            f"node with {world} GPUs: the container sees {gpus}.",
            [_line(log, WORLD_SIZE)],
        )
    return None


GATED = re.compile(r"GatedRepoError|Cannot access gated repo|a gated repository")
GATED_ANONYMOUS = re.compile(r"Please log in|must be authenticated|set HF_TOKEN \(the hf-token")
BAD_TOKEN = re.compile(r"Invalid credentials in Authorization header|the hub rejected HF_TOKEN")
REFUSED = re.compile(r"the hub refused access|403 Forbidden")
NOT_FOUND = re.compile(
    r"RepositoryNotFoundError|Repository Not Found|RevisionNotFoundError|Revision Not Found|"
    r"404 Client Error|not a valid model identifier|not found on the hub|not a hub repository id|"
    r"does not appear to have a file named|has no config.json"
)
TOKEN_SECRET = "the Secret hf-token (key token)"


def hub(log: str, settings: dict[str, str]) -> Cause | None:
    """The hub refused llm_model: gated, a bad token, or no such repository."""
    model = settings.get("llm_model", "?")
    if GATED.search(log):
        anonymous = bool(GATED_ANONYMOUS.search(log))
        fix = (
            f"{model} is gated and the pod sent no token: accept the model's conditions on "
            f"https://huggingface.co/{model} and create {TOKEN_SECRET} with a read token of "
            "that account: kubectl create secret generic hf-token -n <namespace> "
            "--from-literal=token=hf_..."
            if anonymous
            else f"{model} is gated and the token's account has no access yet: request it on "
            f"https://huggingface.co/{model} (with the account of the token in {TOKEN_SECRET}), "
            "or put a token of an account that has access there"
        )
        return Cause("gated model: access not granted", fix, [_line(log, GATED_LINE)])
    if BAD_TOKEN.search(log):
        return Cause(
            "the hub rejected the token",
            f"The token in {TOKEN_SECRET} is invalid or revoked: create a new read token on "
            "https://huggingface.co/settings/tokens and replace the Secret.",
            [_line(log, BAD_TOKEN)],
        )
    if REFUSED.search(log):
        return Cause(
            "the hub refused access with this token",
            f"The account of the token in {TOKEN_SECRET} may not read {model}: check its "
            "permissions (a fine-grained token needs read access to this repository).",
            [_line(log, REFUSED)],
        )
    if NOT_FOUND.search(log):
        private = "401" in _line(log, NOT_FOUND_LINE) or "HTTP 401" in log
        return Cause(
            "invalid model name",
            f"Correct llm_model in {CONFIGMAP} (now {model!r}): no such repository or revision "
            "on the hub."
            + (
                f" Without a token the hub answers 401 for a private repository too: if it is "
                f"private, create {TOKEN_SECRET}."
                if private
                else ""
            ),
            [_line(log, NOT_FOUND_LINE)],
        )
    return None


GATED_LINE = re.compile(r"Access to model|Cannot access gated repo|archon: error:|GatedRepoError")
NOT_FOUND_LINE = re.compile(
    r"archon: error:|RepositoryNotFoundError|RevisionNotFoundError|404 Client Error|"
    r"401 Client Error|not a valid model identifier"
)

DISK = re.compile(
    r"No space left on device|\[Errno 28\]|Not enough free disk space|no space left in|"
    r"needs [\d.]+ [KMGT]?B more but .* free|Disk quota exceeded"
)
NEED_FREE = re.compile(r"needs ([\d.]+ [KMGT]?B) more but (\S+) has ([\d.]+ [KMGT]?B) free")
HF_FREE = re.compile(
    r"The expected file size is: ([\d.]+) MB\. The target location (\S+) only has "
    r"([\d.]+) MB free disk space"
)


def disk_full(
    log: str, usage: Callable[[], tuple[list[str], str]], *, certain: bool = False
) -> Cause | None:
    """The model cache is full (the log says so, or Archon's exit code 8 does): the numbers
    from the volume's stats, and what the log itself measured."""
    if not certain and not DISK.search(log):
        return None
    evidence, holds = usage()
    said = ""
    if m := NEED_FREE.search(log):
        said = f"the download needed {m.group(1)} more, {m.group(2)} had {m.group(3)} free"
    elif m := HF_FREE.search(log):
        said = (
            f"a file of {float(m.group(1)) / 1000:.2f} GB, {m.group(2)} had "
            f"{float(m.group(3)) / 1000:.2f} GB free"
        )
    facts = "; ".join(x for x in (holds, said) if x)
    return Cause(
        "model cache full",
        (f"{facts}. " if facts else "")
        + "Enlarge the PVC model-cache (spec.resources.requests.storage in "
        "manifests/model-server/pvc.yaml; a StorageClass with allowVolumeExpansion grows it in "
        "place), or remove models no longer served from it (/models/hub/models--*).",
        [x for x in (_line(log, DISK), *evidence) if x],
    )
