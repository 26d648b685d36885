"""The Nucleus REST calls tlsync makes, sent exactly as the official ``scale-nucleus`` client sends them.

Same base URL (``NUCLEUS_ENDPOINT`` overrides it, as in the official client), same HTTP
Basic auth (the API key as user name, empty password), same routes and JSON bodies, so a
user's existing key, slice ids and endpoint work unchanged. Retries, backoff and
redaction come from ``tlsync.http.HttpClient``; this module turns Nucleus's answers into
messages a user can act on ("invalid Nucleus API key", "slice slc_... not found").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tlsync.errors import SourceError
from tlsync.http import HttpClient, HttpError

DEFAULT_ENDPOINT = "https://api.scale.com/v1/nucleus"
MAX_PREDICTIONS_PER_REQUEST = 5000  # the server's limit per uploadPredictions call
KINDS = ("slice", "dataset")


def default_endpoint() -> str:
    return (os.environ.get("NUCLEUS_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


class NucleusAPI:
    """One authenticated conversation with Nucleus; the key is only sent to ``endpoint``.

    Image URLs are signed and served by a CDN, so they are fetched without this key: the
    Authorization header never leaves for a host other than the API's.
    """

    def __init__(self, api_key: str, endpoint: str | None = None, http: HttpClient | None = None):
        self.endpoint = (endpoint or default_endpoint()).rstrip("/")
        self.http = http or HttpClient()
        self._auth = (api_key, "")

    def call(self, method: str, route: str, payload: Any = None, not_found: str | None = None) -> Any:
        """Send one request and decode its JSON answer, with Nucleus-specific errors."""
        url = f"{self.endpoint}/{route}"
        try:
            return self.http.json(method, url, "Nucleus", json=payload, auth=self._auth,
                                  headers={"Content-Type": "application/json"})
        except HttpError as e:
            if e.status in (401, 403):
                raise HttpError(f"invalid Nucleus API key (HTTP {e.status} from {method} {url}); "
                                f"check NUCLEUS_API_KEY", e.status) from None
            if e.status == 404 and not_found:
                raise HttpError(not_found, 404) from None
            raise

    def info(self, kind: str, object_id: str) -> dict[str, Any]:
        """``GET slice/{id}/info`` or ``dataset/{id}/info``: names and ids for the summary."""
        answer = self.call("GET", f"{kind}/{object_id}/info", not_found=f"{kind} {object_id} not found")
        if not isinstance(answer, dict):
            raise SourceError(f"Nucleus: GET {self.endpoint}/{kind}/{object_id}/info returned {type(answer).__name__}, "
                              f"not an object")
        return answer

    def export_rows(self, kind: str, object_id: str, page_size: int) -> Iterator[dict[str, Any]]:
        """Every export row (item + annotations) of a slice or dataset, streamed page by page.

        The first page is requested as soon as this is called (the caller can ask for the
        slice's info meanwhile), and each next page while this one's rows are being used,
        so image downloads do not stall on page requests; at most two pages are in memory.
        """
        pages = self._pages(kind, object_id, page_size)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nucleus-pages")
        return self._prefetched(pool, pages, pool.submit(next, pages, None))

    @staticmethod
    def _prefetched(pool: ThreadPoolExecutor, pages: Iterator[list[Any]], upcoming: Any) -> Iterator[dict[str, Any]]:
        try:
            while (page := upcoming.result()) is not None:
                upcoming = pool.submit(next, pages, None)
                yield from page
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _pages(self, kind: str, object_id: str, page_size: int) -> Iterator[list[Any]]:
        """The export's pages, following ``nextPageToken``.

        Falls back to the unpaged ``exportForTraining`` only when the paged route does not
        exist (404/405 on the first page), since the unpaged one times out on big slices.
        """
        route = f"{kind}/{object_id}/exportForTrainingPage"
        token: str | None = None
        first = True
        seen: set[str] = set()
        while True:
            try:
                page = self.call("POST", route, {"pageToken": token, "pageSize": page_size})
            except HttpError as e:
                if first and e.status in (404, 405):
                    yield self._export_unpaged(kind, object_id)
                    return
                raise
            first = False
            rows, token = self._page(page, route)
            yield rows
            if not token:
                return
            # A server that hands back a token it gave before, or an empty page that says
            # "more to come", would be asked forever.
            if token in seen or not rows:
                why = "repeated a nextPageToken it had already given" if token in seen else \
                    "returned an empty page that still has a nextPageToken"
                raise SourceError(f"Nucleus: POST {self.endpoint}/{route} {why} (after {len(seen) + 1} pages); "
                                  f"stopping instead of paging forever")
            seen.add(token)

    def _page(self, page: Any, route: str) -> tuple[list[Any], str | None]:
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise SourceError(f"Nucleus: POST {self.endpoint}/{route} returned an unexpected page "
                              f"(expected an object with a 'data' list)")
        token = page.get("nextPageToken")
        if token is not None and not isinstance(token, str):
            raise SourceError(f"Nucleus: POST {self.endpoint}/{route} returned a nextPageToken that is not a string")
        return page["data"], token

    def _export_unpaged(self, kind: str, object_id: str) -> list[Any]:
        route = f"{kind}/{object_id}/exportForTraining"
        answer = self.call("GET", route, {}, not_found=f"{kind} {object_id} not found")
        if not isinstance(answer, dict) or not isinstance(answer.get("exportedRows"), list):
            raise SourceError(f"Nucleus: GET {self.endpoint}/{route} returned no 'exportedRows' list")
        return answer["exportedRows"]

    def create_model(self, name: str, reference_id: str, metadata: dict[str, Any]) -> str:
        """``POST models/add``; returns the new model's id."""
        answer = self.call("POST", "models/add", {"name": name, "reference_id": reference_id, "metadata": metadata})
        if not isinstance(answer, dict) or not isinstance(answer.get("model_id"), str):
            raise SourceError(f"Nucleus: POST {self.endpoint}/models/add returned no model_id")
        return answer["model_id"]

    def upload_predictions(self, dataset_id: str, model_id: str, annotations: list[dict[str, Any]],
                           update: bool) -> tuple[int, int]:
        """One ``uploadPredictions`` call (at most 5000 boxes); returns (processed, ignored)."""
        if len(annotations) > MAX_PREDICTIONS_PER_REQUEST:
            raise ValueError(f"at most {MAX_PREDICTIONS_PER_REQUEST} predictions per request")
        route = f"dataset/{dataset_id}/model/{model_id}/uploadPredictions"
        answer = self.call("POST", route, {"update": update, "annotations": annotations},
                           not_found=f"dataset {dataset_id} or model {model_id} not found")
        if not isinstance(answer, dict):
            raise SourceError(f"Nucleus: POST {self.endpoint}/{route} returned {type(answer).__name__}, not an object")
        return int(answer.get("predictions_processed", 0)), int(answer.get("predictions_ignored", 0))
