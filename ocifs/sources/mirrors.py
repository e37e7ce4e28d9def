"""A registry reference served from the places registries.conf lists: an
:class:`ocifs.sources.base.ImageSource` over several registry sources.

The first manifest fetch tries every endpoint in order (for each candidate name of
a short name: its mirrors, then its origin) and moves on when one cannot serve it
(connection failure, 404, 5xx after retries, refused access); the endpoint that
answered then serves everything else, the other endpoints of the same name being
the fallback for a blob it lacks. Content is addressed by digest, so any endpoint's
bytes are checked the same way. A digest mismatch never falls through: it is raised.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TypeVar

import trio

from ocifs.errors import AuthError, FetchError, NotFoundError, OcifsError
from ocifs.oci import Descriptor
from ocifs.reference import names_registry, parse_reference
from ocifs.registries_conf import Candidate, Endpoint, RegistriesConf
from ocifs.sources.base import ImageSource, RawManifest

__all__ = ["MirroredSource"]

log = logging.getLogger(__name__)

T = TypeVar("T")
# What makes the next endpoint worth trying (a DigestMismatchError is not among them).
FALLBACK_ERRORS = (NotFoundError, FetchError, AuthError)


class MirroredSource:
    """An :class:`ImageSource` for the user's registry reference ``text``.

    ``load_conf`` reads registries.conf (blocking; run in a thread on first use, so
    constructing does no I/O); ``make`` opens a source for one endpoint (no I/O).
    """

    def __init__(
        self,
        text: str,
        load_conf: Callable[[], RegistriesConf],
        make: Callable[[Endpoint], ImageSource],
    ) -> None:
        self.text = text
        self._load_conf = load_conf
        self._make = make
        self._wanted = parse_reference(text)  # tag/digest; validates the syntax
        self._candidates: tuple[Candidate, ...] | None = None
        self._sources: dict[tuple[int, int], ImageSource] = {}
        self._chosen: tuple[int, int] | None = None
        self._lock = trio.Lock()

    def describe(self) -> str:
        """The fully-qualified name being read (the one that answered, once one has;
        mirrors are not shown, as skopeo shows the name asked for)."""
        if self._chosen is not None and self._candidates is not None:
            return str(self._candidates[self._chosen[0]].ref)
        return str(self._wanted) if names_registry(self.text) else self.text

    def default_reference(self) -> str:
        """The digest the user's reference names, else its tag."""
        return self._wanted.reference

    async def _resolved(self) -> tuple[Candidate, ...]:
        if self._candidates is None:
            conf = await trio.to_thread.run_sync(self._load_conf)
            self._candidates = conf.candidates(self.text)
        return self._candidates

    def _source(self, key: tuple[int, int]) -> ImageSource:
        src = self._sources.get(key)
        if src is None:
            assert self._candidates is not None
            src = self._make(self._candidates[key[0]].endpoints[key[1]])
            self._sources[key] = src
        return src

    def _where(self, key: tuple[int, int]) -> str:
        assert self._candidates is not None
        ep = self._candidates[key[0]].endpoints[key[1]]
        return f"{ep.ref.name} ({'mirror' if ep.mirror else 'origin'})"

    def _order(self) -> list[tuple[int, int]]:
        """Endpoints to try: the chosen one first, then the rest of its name's; all of
        every candidate's in order before a choice is made."""
        assert self._candidates is not None
        if self._chosen is None:
            return [
                (c, e)
                for c, cand in enumerate(self._candidates)
                for e in range(len(cand.endpoints))
            ]
        c, chosen = self._chosen
        others = [(c, e) for e in range(len(self._candidates[c].endpoints)) if e != chosen]
        return [self._chosen, *others]

    async def _first_answer(
        self, order: Sequence[tuple[int, int]], call: Callable[[ImageSource], Awaitable[T]]
    ) -> tuple[tuple[int, int], T]:
        failures: list[tuple[tuple[int, int], OcifsError]] = []
        for key in order:
            try:
                return key, await call(self._source(key))
            except FALLBACK_ERRORS as exc:
                if len(order) > 1:
                    log.info("%s: %s; trying the next endpoint", self._where(key), exc)
                failures.append((key, exc))
        raise _combined(failures, self._where)

    async def get_manifest(self, reference: str) -> RawManifest:
        """The manifest at ``reference``, from the first endpoint that has it (see the
        module docstring). Raises what the last endpoint raised, naming the others."""
        async with self._lock:
            await self._resolved()
            key, raw = await self._first_answer(
                self._order(), lambda src: src.get_manifest(reference)
            )
            if self._chosen is None:
                self._chosen = key
                if len(self._order()) > 1 or key != (0, 0):
                    log.info("%s: served from %s", self.describe(), self._where(key))
        return raw

    async def _blob_call(self, call: Callable[[ImageSource], Awaitable[T]]) -> T:
        await self._resolved()
        return (await self._first_answer(self._order(), call))[1]

    async def get_blob(self, desc: Descriptor) -> bytes:
        """A small blob, verified, from the answering endpoint (others as fallback)."""
        return await self._blob_call(lambda src: src.get_blob(desc))

    async def get_referrers(self, digest: str, artifact_type: str) -> tuple[Descriptor, ...]:
        """Referrers of ``digest`` of that ``artifact_type``, from the first endpoint
        that answers (see :meth:`ocifs.sources.registry.RegistrySource.get_referrers`)."""

        async def call(src: ImageSource) -> tuple[Descriptor, ...]:
            lookup = getattr(src, "get_referrers", None)
            found: tuple[Descriptor, ...] = (
                () if lookup is None else await lookup(digest, artifact_type)
            )
            return found

        return await self._blob_call(call)

    async def read_blob(self, desc: Descriptor, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of a blob (not verified here)."""
        return await self._blob_call(lambda src: src.read_blob(desc, offset, size))

    async def stream_blob(self, desc: Descriptor) -> AsyncGenerator[bytes, None]:
        """The whole blob; falls over to another endpoint only before the first piece."""
        await self._resolved()
        failures: list[tuple[tuple[int, int], OcifsError]] = []
        for key in self._order():
            stream = self._source(key).stream_blob(desc)
            try:
                try:
                    first = await stream.__anext__()
                except StopAsyncIteration:
                    return
                except FALLBACK_ERRORS as exc:
                    failures.append((key, exc))
                    continue
                yield first
                async for piece in stream:
                    yield piece
                return
            finally:
                await stream.aclose()
        raise _combined(failures, self._where)

    async def aclose(self) -> None:
        """Close every endpoint's source."""
        sources, self._sources = list(self._sources.values()), {}
        for src in sources:
            await src.aclose()


def _combined(
    failures: list[tuple[tuple[int, int], OcifsError]],
    where: Callable[[tuple[int, int]], str],
) -> OcifsError:
    """The last failure, its message extended with the endpoints tried before it."""
    _, last = failures[-1]
    if len(failures) == 1:
        return last
    tried = "; ".join(f"{where(k)}: {exc}" for k, exc in failures[:-1])
    return type(last)(f"{last} (also tried {tried})")
