"""SAM as a shared Ray Serve service for GRPO reward workers, and its ``MaskDecoder`` client.

EasyR1 / verl reward functions run in Ray actors without a GPU; a SAM inside each of them either
fails or encodes images on a CPU (tens of seconds for vit_h). This module serves SAM on the Ray
cluster the trainer already runs on: ``replicas`` Ray Serve replicas, each a ``SamDecoder`` (or,
with ``family="sam2"``, a SAM 2 ``Sam2Decoder``) with its byte-bounded embedding cache, called
by every reward worker through ``RaySamDecoder``.
``docs/sam_service.md`` has the topology, sizing and fault handling.

Service (``serve_sam`` / ``getok serve-sam``): app ``name`` (default ``getok-sam``), deployment
``SamService``; each replica reserves ``gpus_per_replica`` GPUs (a fraction shares a GPU with
the rollout engine) and ``cpus_per_replica`` CPUs, loads ``load_sam(model_type, checkpoint,
device)`` and keeps a cache of ``cache_gb`` GiB (a vit_h embedding, 256 x 64 x 64 float32, is
4 MiB). Concurrent requests are batched with ``serve.batch`` (``max_batch_size``,
``batch_wait_timeout_s``) and decoded one batch at a time, the requests of one image back to
back (one encoding, then cache hits). No HTTP proxy: deployment handles only.

Routing (cache locality): a request carries its image key as Serve's ``multiplexed_model_id``,
and the deployment's request router ``ImageAffinityRouter`` (Serve's public
``ray.serve.request_router.RequestRouter`` extension) sends it to the live replica of highest
rendezvous weight ``affinity_weight(key, replica_id)``: every caller picks the same replica for
an image without coordination, a replica's death moves only its own images, and a full replica
spills over to the others. Serve's built-in multiplex routing was not enough: replicas report
the ids they hold every 0.1 s (``PUSH_MULTIPLEXED_MODEL_IDS_INTERVAL_S``) through the controller,
and until a router hears of an id it sends the request to the replicas holding the fewest ids
(``MultiplexMixin.apply_multiplex_routing``), so concurrent first requests for a new image from
several workers land on different replicas and encode it several times.

A request is a plain dict: ``image_key``, ``image_path`` (read by the replica on shared storage;
a relative path is joined to the service's ``image_root``), ``mode`` and ``instances``
(``dataclasses.asdict`` of ``Instance``). The reply holds the masks bit-packed and what the
request cost the replica (encoder calls, cache hits, prompts), which the client adds to its
``counters``. A missing image is a ``FileNotFoundError`` naming the resolved path.

Client (``RaySamDecoder``, ``make_decoder("ray", ...)``): groups requests by image, sends one
call per image (all concurrently), gathers the masks. Faults: a call whose replica died is
resent (``retries`` times) and Serve replaces the replica; a decode not answered within
``timeout_s`` raises ``TimeoutError`` naming the app and the seconds, or with
``fallback="region"`` decodes the missing images with ``RegionDecoder`` and reports which masks
did so (``decode_flagged``: the rewards' ``mask_fallback``).

Nothing here imports ray, torch or segment-anything until a service or client is used.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..codec.instance import Instance
from .base import MODES, DecodeGroup, ImageSource, MaskDecoder
from .region import RegionDecoder
from .sam import Sam2Decoder, SamDecoder
from .sam_models import load_sam, load_sam2

logger = logging.getLogger(__name__)

DEFAULT_APP = "getok-sam"
DEPLOYMENT = "SamService"
#: A ``multiplexed_model_id`` of this prefix + i routes to the i-th live replica (by replica id):
#: how ``service_stats`` reaches every replica.
REPLICA_ROUTE_PREFIX = "\x00replica:"
FALLBACKS = (None, "region")
#: ``ServiceConfig.family``: segment-anything (``SamDecoder``) or SAM 2 (``Sam2Decoder``).
FAMILIES = ("sam", "sam2")


@dataclass(frozen=True)
class ServiceConfig:
    """What a service replica is: the SAM (``model_type``, ``checkpoint``; ``tiny`` for
    ``getok tiny-sam`` checkpoints; with ``family="sam2"`` a SAM 2, ``model_type`` then being its
    config, ``tiny`` for ``getok tiny-sam --sam2``), its device (default ``cuda`` when ``gpus_per_replica`` > 0,
    else ``cpu``) and ``dtype`` (float16 / bfloat16 on CUDA), the embedding cache size in GiB,
    the batching (``max_batch_size`` requests, waiting at most ``batch_wait_timeout_s`` seconds
    for a batch to fill), ``image_root`` (relative image paths are joined to it), the Ray
    resources per replica, ``max_ongoing_requests`` per replica, and ``torch_threads`` (intra-op
    threads of each replica; None: torch's default)."""

    checkpoint: str
    model_type: str = "vit_h"
    replicas: int = 1
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    cache_gb: float = 2.0
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.005
    image_root: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_ongoing_requests: int = 256
    torch_threads: int | None = None
    family: str = "sam"

    def __post_init__(self):
        if not self.checkpoint:
            raise ValueError("the SAM service needs a checkpoint")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if int(self.replicas) < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if float(self.gpus_per_replica) < 0 or float(self.cpus_per_replica) < 0:
            raise ValueError("gpus_per_replica and cpus_per_replica must be >= 0")
        if float(self.cache_gb) < 0:
            raise ValueError(f"cache_gb must be >= 0, got {self.cache_gb}")
        if int(self.max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")

    @property
    def cache_bytes(self) -> int:
        return int(float(self.cache_gb) * (1 << 30))


# ---------------------------------------------------------------------- pure helpers
def affinity_weight(key: str, replica_id: str) -> int:
    """Rendezvous (highest-random-weight) hash of an image key on a replica: a request goes to
    the live replica of highest weight. 64-bit BLAKE2b of ``key``, NUL, ``replica_id``."""
    digest = hashlib.blake2b(f"{key}\x00{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank_replicas(key: str, replica_ids: Sequence[str]) -> list[str]:
    """``replica_ids`` from the preferred replica for ``key`` to the least preferred."""
    return sorted(replica_ids, key=lambda r: (-affinity_weight(key, r), r))


def resolve_image(path: str, image_root: str | None, image_key: str = "") -> str:
    """The file a request's ``image_path`` names: relative paths joined to ``image_root``.
    Raises FileNotFoundError naming the resolved path (and the key) when it is not a file."""
    if not path:
        raise FileNotFoundError(f"no image_path for image {image_key!r}: the SAM service reads images "
                                "from shared storage, so the ground truth needs an image_path")
    full = path if os.path.isabs(path) or not image_root else os.path.join(image_root, path)
    if not os.path.isfile(full):
        raise FileNotFoundError(f"image not found by the SAM service: {full} (image_key {image_key!r}, "
                                f"image_root {image_root!r})")
    return full


def pack_masks(masks: Sequence[np.ndarray]) -> dict:
    """Bool (H, W) masks of one image -> ``{"shape": (k, H, W), "bits": uint8 packbits}``."""
    arr = np.asarray(masks, bool)
    return {"shape": arr.shape, "bits": np.packbits(arr.reshape(len(arr), -1), axis=1)}


def unpack_masks(packed: dict) -> list[np.ndarray]:
    """The inverse of ``pack_masks``."""
    k, h, w = packed["shape"]
    flat = np.unpackbits(packed["bits"], axis=1, count=h * w).astype(bool)
    return list(flat.reshape(k, h, w))


def instance_to_dict(inst: Instance) -> dict:
    return dataclasses.asdict(inst)


# ---------------------------------------------------------------------- replica side
class SamReplica:
    """What one replica does, without Ray: a ``SamDecoder`` over ``load_sam`` (``Sam2Decoder`` over
    ``load_sam2`` for ``family="sam2"``) and
    ``decode_many(requests)`` (one list entry per request: a reply dict, or the exception that
    request raised). The requests of one image run back to back, so the image is encoded once
    and the others hit the cache; each request's instances are decoded as their own group, so a
    reply never depends on what else was in the batch (the same masks as an in-process
    ``SamDecoder`` given the same call). Not thread-safe: the deployment runs one batch at a
    time."""

    def __init__(self, config: ServiceConfig | dict):
        cfg = config if isinstance(config, ServiceConfig) else ServiceConfig(**config)
        import torch

        if cfg.torch_threads:
            torch.set_num_threads(int(cfg.torch_threads))
        device = cfg.device or ("cuda" if float(cfg.gpus_per_replica) > 0 else "cpu")
        self.config = cfg
        if cfg.family == "sam2":
            self.decoder = Sam2Decoder(load_sam2(cfg.model_type, cfg.checkpoint, device),
                                       cache_bytes=cfg.cache_bytes, dtype=cfg.dtype)
        else:
            self.decoder = SamDecoder(load_sam(cfg.model_type, cfg.checkpoint, device), cache_bytes=cfg.cache_bytes,
                                      dtype=cfg.dtype)

    def decode_many(self, requests: Sequence[dict]) -> list:
        out: list = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r["image_key"], []).append(i)
        c = self.decoder.counters
        for key, idx in groups.items():  # an image's requests back to back: one encoding, then cache hits
            for i in idx:
                r = requests[i]
                try:
                    mode = r.get("mode", "joint")
                    if mode not in MODES:
                        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
                    path = resolve_image(r.get("image_path", ""), self.config.image_root, key)
                    insts = [Instance(**d) for d in r["instances"]]
                    before = (c.encoder_calls, c.cache_hits, c.prompts_decoded)
                    self.decoder.mode = mode
                    masks = self.decoder.decode_group(DecodeGroup(key, path, insts))
                    out[i] = {"masks": pack_masks(masks), "encoder_calls": c.encoder_calls - before[0],
                              "cache_hits": c.cache_hits - before[1], "prompts_decoded": c.prompts_decoded - before[2]}
                except Exception as exc:  # noqa: BLE001 (one request's failure is that request's answer)
                    out[i] = exc
        return out

    def stats(self) -> dict:
        c = self.decoder.counters
        return {"encoder_calls": c.encoder_calls, "cache_hits": c.cache_hits, "prompts_decoded": c.prompts_decoded,
                "cache_entries": len(self.decoder.cache), "cache_bytes": self.decoder.cache.nbytes}


@functools.lru_cache(maxsize=None)
def _serve_classes():
    """(the ``SamService`` deployment class, ``ImageAffinityRouter``), built on first use so
    that importing this module needs no ray."""
    import asyncio

    from ray import serve
    from ray.serve.request_router import RequestRouter

    class ImageAffinityRouter(RequestRouter):
        """Routes a request to the live replica of highest ``affinity_weight(image key,
        replica id)`` (then the others, when it is full or unreachable); an id of
        ``REPLICA_ROUTE_PREFIX`` + i to the i-th replica by id; no key: any replica."""

        async def choose_replicas(self, candidate_replicas, pending_request=None):
            if not candidate_replicas:
                return []
            key = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
            if pending_request is not None:
                pending_request.routing_context.should_backoff = True  # back off when all are full
            if not key:
                return [list(candidate_replicas)]
            by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
            if key.startswith(REPLICA_ROUTE_PREFIX):
                ids = sorted(by_id)
                return [[by_id[ids[int(key[len(REPLICA_ROUTE_PREFIX):]) % len(ids)]]]]
            ranked = [by_id[r] for r in rank_replicas(key, list(by_id))]
            return [ranked[:1], ranked[1:]]

    class SamService:
        """A Serve replica: ``SamReplica`` behind a ``serve.batch`` queue."""

        def __init__(self, config: dict):
            self.replica = SamReplica(config)
            self._lock = threading.Lock()
            cfg = self.replica.config
            self._batched.set_max_batch_size(int(cfg.max_batch_size))
            self._batched.set_batch_wait_timeout_s(float(cfg.batch_wait_timeout_s))

        def _run(self, fn, *args):
            with self._lock:
                return fn(*args)

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
        async def _batched(self, requests: list) -> list:
            return await asyncio.to_thread(self._run, self.replica.decode_many, requests)

        async def decode(self, request: dict) -> dict:
            """Masks of one image's instances: ``{"masks": packed, "encoder_calls", ...}``."""
            out = await self._batched(request)
            if isinstance(out, BaseException):
                raise out
            return out

        async def stats(self) -> dict:
            """This replica's counters and cache size, with its replica id."""
            out = await asyncio.to_thread(self._run, self.replica.stats)
            return {"replica": serve.get_replica_context().replica_id.unique_id, **out}

    return SamService, ImageAffinityRouter


def __getattr__(name: str):
    """``SamService`` and ``ImageAffinityRouter`` as module attributes, built on first access
    (Ray Serve imports the request router by its path, ``getok_core.decoders.service.ImageAffinityRouter``)."""
    if name in ("SamService", "ImageAffinityRouter"):
        service, router = _serve_classes()
        return service if name == "SamService" else router
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------- start / stop
def connect(address: str | None = "auto") -> None:
    """``ray.init(address, ignore_reinit_error=True)`` unless Ray is already initialized (as in
    a reward worker, which is a Ray actor)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)


def serve_sam(checkpoint: str, name: str = DEFAULT_APP, address: str | None = "auto", **config):
    """Start (or update) the SAM app ``name`` on the cluster at ``address`` and return its
    handle once every replica is healthy. ``config``: the other ``ServiceConfig`` fields. The
    app keeps running after this process exits; ``stop_sam`` removes it."""
    cfg = ServiceConfig(checkpoint=os.path.abspath(os.fspath(checkpoint)), **config)
    if cfg.image_root is not None:
        cfg = dataclasses.replace(cfg, image_root=os.path.abspath(cfg.image_root))
    connect(address)
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    service_cls, router_cls = _serve_classes()
    serve.start(proxy_location="Disabled")
    deployment = serve.deployment(service_cls, name=DEPLOYMENT).options(
        num_replicas=int(cfg.replicas),
        ray_actor_options={"num_gpus": float(cfg.gpus_per_replica), "num_cpus": float(cfg.cpus_per_replica)},
        max_ongoing_requests=max(int(cfg.max_ongoing_requests), int(cfg.max_batch_size)),
        request_router_config=RequestRouterConfig(request_router_class=router_cls),
        health_check_period_s=2.0,
    )
    return serve.run(deployment.bind(dataclasses.asdict(cfg)), name=name, route_prefix=None)


def stop_sam(name: str = DEFAULT_APP, address: str | None = "auto") -> bool:
    """Delete the app ``name``; False when it was not running."""
    connect(address)
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_app_handle(name)
    except RayServeException:
        return False
    serve.delete(name)
    return True


def service_stats(name: str = DEFAULT_APP, address: str | None = "auto", timeout_s: float = 60.0) -> list[dict]:
    """Each running replica's ``stats()`` (replica id, encoder calls, cache hits, prompts,
    cache entries and bytes), one call routed to each replica."""
    connect(address)
    from ray import serve

    status = serve.status().applications[name].deployments[DEPLOYMENT]
    n = int(status.replica_states.get("RUNNING", 0))
    handle = serve.get_app_handle(name)
    calls = [handle.options(multiplexed_model_id=f"{REPLICA_ROUTE_PREFIX}{i}").stats.remote() for i in range(n)]
    out = {}
    for c in calls:
        s = c.result(timeout_s=timeout_s)
        out[s["replica"]] = s
    return [out[k] for k in sorted(out)]


# ---------------------------------------------------------------------- client
class SamServiceError(RuntimeError):
    """The SAM service could not serve a call (not running, or its replicas kept dying)."""


class RaySamDecoder(MaskDecoder):
    """A ``MaskDecoder`` whose masks come from the SAM service app ``app`` (same masks as an
    in-process ``SamDecoder`` of the same checkpoint).

    ``RaySamDecoder(app="getok-sam", address="auto", mode="joint", timeout_s=120, retries=3,
    fallback=None, image_root=None, **start)``: ``address`` is used only when Ray is not
    initialized in this process (a reward worker is a Ray actor: it uses its cluster).
    ``timeout_s`` bounds one ``decode`` call in total; ``retries`` is how often a call is resent
    after its replica died. ``fallback="region"``: images not served in time (or when the service
    is unavailable) are decoded by ``RegionDecoder`` here, reading ``image_root`` / the path.
    ``start``: ``ServiceConfig`` fields (``checkpoint`` needed): the app is started with them on
    first use when it is not running (with this ``image_root`` unless ``start`` names one).
    Thread-safe: concurrent ``decode`` calls proceed in parallel. ``counters`` adds up what the
    service did for this client; ``fallbacks`` counts masks decoded by the fallback.
    """

    name = "ray"
    thread_safe = True

    def __init__(self, app: str = DEFAULT_APP, address: str | None = "auto", mode: str = "joint",
                 timeout_s: float = 120.0, retries: int = 3, fallback: str | None = None,
                 image_root: str | None = None, **start):
        super().__init__(mode)
        if fallback in ("none", "None", ""):
            fallback = None
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be None or 'region', got {fallback!r}")
        if float(timeout_s) <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if start:
            ServiceConfig(**{"checkpoint": "?", **start})  # a typo fails here, not at first use
        self.app = str(app)
        self.address = address
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.fallback = fallback
        self.image_root = image_root
        self.start = dict(start)
        self.fallbacks = 0
        self._handle = None
        self._lock = threading.Lock()
        self._fallback_decoder = None

    # -------------------------------------------------------------- connection
    def handle(self):
        """The app's deployment handle (connecting, and starting the app when ``start`` says
        how and it is not running). Raises SamServiceError when it is not running."""
        with self._lock:
            if self._handle is None:
                try:
                    connect(self.address)
                except Exception as exc:  # noqa: BLE001 (no cluster: a clear error, or the fallback)
                    raise SamServiceError(f"SAM service app {self.app!r}: cannot connect to the Ray cluster at "
                                          f"{self.address!r} ({type(exc).__name__}: {exc})") from None
                from ray import serve
                from ray.serve.exceptions import RayServeException

                try:
                    self._handle = serve.get_app_handle(self.app)
                except RayServeException as exc:
                    if not self.start.get("checkpoint"):
                        raise SamServiceError(
                            f"SAM service app {self.app!r} is not running ({exc}); start it with "
                            f"`getok serve-sam --name {self.app} --checkpoint ...` or pass checkpoint=... "
                            "to start it on first use") from None
                    logger.info("starting SAM service app %r", self.app)
                    start = {"image_root": self.image_root, **self.start}  # the client's root, unless told
                    self._handle = serve_sam(name=self.app, address=self.address, **start)
            return self._handle

    # -------------------------------------------------------------- decoding
    def decode_group(self, group: DecodeGroup) -> list[np.ndarray]:
        return self.decode([(group.image_key, group.image, inst) for inst in group.instances])

    def decode(self, requests: Sequence[tuple[str, ImageSource, Instance]]) -> list[np.ndarray]:
        return self.decode_flagged(requests)[0]

    def decode_flagged(self, requests: Sequence[tuple[str, ImageSource, Instance]]):
        """(masks in request order, flags: True where the mask came from the fallback)."""
        order: dict[str, list[int]] = {}
        for i, (key, _, _) in enumerate(requests):
            order.setdefault(str(key), []).append(i)
        masks: list = [None] * len(requests)
        flags = [False] * len(requests)
        if not requests:
            return masks, flags
        deadline = time.monotonic() + self.timeout_s
        payloads = {key: self._payload(key, [requests[i] for i in idx]) for key, idx in order.items()}
        try:
            handle = self.handle()
        except SamServiceError:
            if self.fallback is None:
                raise
            logger.warning("SAM service %r unavailable: %d image(s) decoded by the %s fallback", self.app,
                           len(order), self.fallback)
            return self._fall_back(requests, order, list(order), masks, flags)
        pending, failed = self._gather(handle, payloads, order, masks, deadline)
        if not pending and not failed:
            return masks, flags
        if self.fallback is None:
            if pending:
                raise TimeoutError(f"SAM service {self.app!r} did not answer within {self.timeout_s:g} s "
                                   f"({len(pending)} of {len(order)} images pending; raise timeout_s, add "
                                   f"replicas, or set fallback='region')")
            raise SamServiceError(f"SAM service {self.app!r}: {len(failed)} image(s) failed after "
                                  f"{self.retries} retries: replicas kept dying")
        missing = failed + pending
        logger.warning("SAM service %r: %d of %d image(s) not served within %g s: decoded by the %s fallback",
                       self.app, len(missing), len(order), self.timeout_s, self.fallback)
        return self._fall_back(requests, order, missing, masks, flags)

    def _payload(self, key: str, requests: Sequence[tuple[str, ImageSource, Instance]]) -> dict:
        """The service request of one image's (key, source, instance) requests."""
        source = requests[0][1]
        if not isinstance(source, (str, os.PathLike)):
            raise ValueError(f"the SAM service reads images by path; image {key!r} came as "
                             f"{type(source).__name__}")
        return {"image_key": key, "image_path": os.fspath(source), "mode": self.mode,
                "instances": [instance_to_dict(inst) for _, _, inst in requests]}

    def _gather(self, handle, payloads: dict, order: dict, masks: list, deadline: float):
        """Send every image's call at once, then collect the answers into ``masks`` (request
        order) until ``deadline`` (``time.monotonic``). A call whose replica died is resent, at
        most ``retries`` times; a call that raised in the replica re-raises its error here (the
        other calls cancelled). Returns (image keys still pending at the deadline, cancelled;
        image keys whose replicas kept dying)."""
        from ray.exceptions import RayActorError, RayTaskError

        def submit(key):
            return handle.options(multiplexed_model_id=key).decode.remote(payloads[key])

        pending = {key: submit(key) for key in order}
        attempts = dict.fromkeys(order, 0)
        failed: list[str] = []
        while pending:
            key, resp = next(iter(pending.items()))
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                out = resp.result(timeout_s=remaining)
            except TimeoutError:
                break
            except RayActorError as exc:
                attempts[key] += 1
                if attempts[key] > self.retries:
                    del pending[key]
                    failed.append(key)
                    logger.warning("SAM service %r: image %r failed %d times (%s)", self.app, key, attempts[key],
                                   type(exc).__name__)
                    continue
                logger.info("SAM service %r: replica lost for image %r (%s); resending", self.app, key,
                            type(exc).__name__)
                time.sleep(min(0.2 * attempts[key], max(deadline - time.monotonic(), 0)))
                pending[key] = submit(key)  # same key: stays first, retried next
                continue
            except RayTaskError as exc:
                for r in pending.values():
                    r.cancel()
                cause = getattr(exc, "cause", None)
                if isinstance(cause, Exception):
                    raise cause from None
                raise
            del pending[key]
            with self._lock:
                self.counters.encoder_calls += out["encoder_calls"]
                self.counters.cache_hits += out["cache_hits"]
                self.counters.prompts_decoded += out["prompts_decoded"]
            for i, m in zip(order[key], unpack_masks(out["masks"])):
                masks[i] = m
        for r in pending.values():
            r.cancel()
        return list(pending), failed

    def _fall_back(self, requests, order, keys, masks, flags):
        with self._lock:
            if self._fallback_decoder is None:
                self._fallback_decoder = RegionDecoder(mode=self.mode)
            dec = self._fallback_decoder
        sub, where = [], []
        for key in keys:
            for i in order[key]:
                k, source, inst = requests[i]
                if isinstance(source, (str, os.PathLike)) and self.image_root and not os.path.isabs(source):
                    source = os.path.join(self.image_root, source)
                sub.append((k, source, inst))
                where.append(i)
        with self._lock:  # RegionDecoder keeps per-image state
            out = dec.decode(sub)
            self.fallbacks += len(where)
        for i, m in zip(where, out):
            masks[i] = m
            flags[i] = True
        return masks, flags

    def __repr__(self) -> str:
        return (f"RaySamDecoder(app={self.app!r}, mode={self.mode!r}, timeout_s={self.timeout_s:g}, "
                f"retries={self.retries}, fallback={self.fallback!r})")


# ---------------------------------------------------------------------- CLI
def add_arguments(sp) -> None:
    """The options of ``getok serve-sam``."""
    sp.add_argument("--address", default="auto", help="Ray cluster address (default: auto, the running cluster)")
    sp.add_argument("--name", default=DEFAULT_APP, help="Serve application name (default: %(default)s)")
    sp.add_argument("--stop", action="store_true", help="delete the application and exit")
    sp.add_argument("--checkpoint", help="SAM checkpoint, a path every replica can read")
    sp.add_argument("--model-type", default="vit_h",
                    help="vit_h, vit_l, vit_b or tiny; with --family sam2 a SAM 2 config (e.g. "
                         "configs/sam2.1/sam2.1_hiera_l.yaml) or tiny (default: %(default)s)")
    sp.add_argument("--family", default="sam", choices=FAMILIES,
                    help="sam (segment-anything) or sam2 (the sam2 package) (default: %(default)s)")
    sp.add_argument("--replicas", type=int, default=1, help="number of replicas (default: %(default)s)")
    sp.add_argument("--gpus-per-replica", type=float, default=1.0,
                    help="GPUs reserved per replica; a fraction shares a GPU, 0 runs on CPU (default: %(default)s)")
    sp.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs per replica (default: %(default)s)")
    sp.add_argument("--cache-gb", type=float, default=2.0,
                    help="embedding cache per replica in GiB; a vit_h embedding is 4 MiB (default: %(default)s)")
    sp.add_argument("--max-batch-size", type=int, default=16,
                    help="requests (one image each) batched per step (default: %(default)s)")
    sp.add_argument("--batch-wait-ms", type=float, default=5.0,
                    help="how long a batch waits to fill, in ms (default: %(default)s)")
    sp.add_argument("--image-root", help="relative image paths of the ground truths are joined to this")
    sp.add_argument("--device", help="replica device (default: cuda when --gpus-per-replica > 0, else cpu)")
    sp.add_argument("--dtype", help="float16 or bfloat16 on CUDA (default: float32)")
    sp.add_argument("--torch-threads", type=int, help="intra-op threads per replica (default: torch's)")


def run(args) -> int:
    """``getok serve-sam``: start the app and return once it is healthy, or ``--stop`` it."""
    import json

    if args.stop:
        stopped = stop_sam(args.name, args.address)
        print(f"{'stopped' if stopped else 'not running'}: {args.name}")
        return 0
    if not args.checkpoint:
        raise SystemExit("getok serve-sam: --checkpoint is required (or --stop)")
    serve_sam(args.checkpoint, name=args.name, address=args.address, model_type=args.model_type, family=args.family,
              replicas=args.replicas, gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica,
              cache_gb=args.cache_gb, max_batch_size=args.max_batch_size,
              batch_wait_timeout_s=args.batch_wait_ms / 1000.0, image_root=args.image_root, device=args.device,
              dtype=args.dtype, torch_threads=args.torch_threads)
    print(json.dumps({"app": args.name, "replicas": args.replicas, "gpus_per_replica": args.gpus_per_replica,
                      "status": "RUNNING"}))
    return 0


__all__ = ["ServiceConfig", "SamReplica", "RaySamDecoder", "SamServiceError", "serve_sam", "stop_sam",
           "service_stats", "connect", "affinity_weight", "rank_replicas", "resolve_image", "pack_masks",
           "unpack_masks", "DEFAULT_APP", "DEPLOYMENT", "add_arguments", "run"]
