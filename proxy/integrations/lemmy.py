"""Who uploaded a caught file, and which post or comment uses it: read-only, from Lemmy's database.

Tables and columns as Lemmy's published migrations define them; 0.19 and 1.0 differ, and the version is
told from the columns present:
- 0.19: `local_image(pictrs_alias, local_user_id -> local_user.id, pictrs_delete_token, published)`,
  `local_user.person_id -> person.id`, `person(name, actor_id, local, instance_id)`, `post(ap_id, url,
  thumbnail_url, body, creator_id, local, published)`, `comment(ap_id, content, creator_id, post_id, local)`.
- 1.0: `local_image(pictrs_alias, person_id -> person.id, thumbnail_for_post_id -> post.id, published_at)`,
  `person(name, ap_id, ...)`, and `published_at` for post and comment.
Lemmy links an uploaded image as `https://{its domain}/pictrs/image/{alias}`, so the posts and comments that
use a file are those whose url, thumbnail_url, body or content names one of its aliases. A federated post's
thumbnail is cached by the local pict-rs (no uploader): it is named by the post, its author and instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.config import LemmyConfig
from proxy.integrations.pictrs import read_only_engine

MAX_USES = 50


def _patterns(aliases: Sequence[str]) -> list[str]:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

    return [f"%/pictrs/image/{escape(a)}%" for a in aliases]


_UPLOADERS_1 = ("SELECT li.pictrs_alias, p.name, p.ap_id AS actor, i.domain FROM local_image li "
                "JOIN person p ON p.id = li.person_id JOIN instance i ON i.id = p.instance_id "
                "WHERE li.pictrs_alias = ANY(:aliases)")
_UPLOADERS_019 = ("SELECT li.pictrs_alias, p.name, p.actor_id AS actor, i.domain FROM local_image li "
                  "JOIN local_user lu ON lu.id = li.local_user_id JOIN person p ON p.id = lu.person_id "
                  "JOIN instance i ON i.id = p.instance_id WHERE li.pictrs_alias = ANY(:aliases)")
_POSTS_1 = ("SELECT po.ap_id, po.url, po.thumbnail_url, po.local, p.name, p.ap_id AS actor, i.domain FROM post po "
            "JOIN person p ON p.id = po.creator_id JOIN instance i ON i.id = p.instance_id "
            "WHERE po.url LIKE ANY(:patterns) OR po.thumbnail_url LIKE ANY(:patterns) OR po.body LIKE ANY(:patterns) "
            "OR po.id IN (SELECT thumbnail_for_post_id FROM local_image WHERE pictrs_alias = ANY(:aliases)) "
            "ORDER BY po.published_at LIMIT :limit")
_POSTS_019 = ("SELECT po.ap_id, po.url, po.thumbnail_url, po.local, p.name, p.actor_id AS actor, i.domain FROM post po "
              "JOIN person p ON p.id = po.creator_id JOIN instance i ON i.id = p.instance_id "
              "WHERE po.url LIKE ANY(:patterns) OR po.thumbnail_url LIKE ANY(:patterns) "
              "OR po.body LIKE ANY(:patterns) ORDER BY po.published LIMIT :limit")
_COMMENTS_1 = ("SELECT c.ap_id, c.local, p.name, p.ap_id AS actor, i.domain, po.ap_id AS post FROM comment c "
               "JOIN person p ON p.id = c.creator_id JOIN instance i ON i.id = p.instance_id "
               "JOIN post po ON po.id = c.post_id WHERE c.content LIKE ANY(:patterns) "
               "ORDER BY c.published_at LIMIT :limit")
_COMMENTS_019 = ("SELECT c.ap_id, c.local, p.name, p.actor_id AS actor, i.domain, po.ap_id AS post FROM comment c "
                 "JOIN person p ON p.id = c.creator_id JOIN instance i ON i.id = p.instance_id "
                 "JOIN post po ON po.id = c.post_id WHERE c.content LIKE ANY(:patterns) "
                 "ORDER BY c.published LIMIT :limit")
_ALIASES_1 = "SELECT pictrs_alias FROM local_image ORDER BY published_at DESC LIMIT :limit"
_ALIASES_019 = "SELECT pictrs_alias FROM local_image ORDER BY published DESC LIMIT :limit"


@dataclass(frozen=True)
class Schema:
    version: str  # "0.19" or "1.0"
    uploaders: str
    posts: str
    comments: str
    aliases: str


SCHEMAS = {"0.19": Schema("0.19", _UPLOADERS_019, _POSTS_019, _COMMENTS_019, _ALIASES_019),
           "1.0": Schema("1.0", _UPLOADERS_1, _POSTS_1, _COMMENTS_1, _ALIASES_1)}


class LemmyDatabase:
    """Attribution queries on Lemmy's PostgreSQL database, every transaction read-only."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._schema: Schema | None = None

    @classmethod
    def from_config(cls, config: LemmyConfig) -> LemmyDatabase | None:
        return cls(read_only_engine(config.database_url)) if config.database_url else None

    async def close(self) -> None:
        await self.engine.dispose()

    async def schema(self) -> Schema:
        if self._schema is None:
            async with self.engine.connect() as conn:
                columns = set((await conn.execute(text(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'local_image' "
                    "AND table_schema = current_schema()"))).scalars())
            if "person_id" in columns:
                self._schema = SCHEMAS["1.0"]
            elif "local_user_id" in columns:
                self._schema = SCHEMAS["0.19"]
            else:
                raise RuntimeError("[lemmy] database_url: no local_image table of Lemmy 0.19 or 1.0 there")
        return self._schema

    async def aliases(self, limit: int = 20_000) -> list[str]:
        """Aliases of locally uploaded files, newest first (candidates for key -> alias resolution)."""
        s = await self.schema()
        async with self.engine.connect() as conn:
            return list((await conn.execute(text(s.aliases), {"limit": limit})).scalars())

    async def attribute(self, aliases: Sequence[str]) -> dict[str, Any]:
        """The uploading account, and the posts and comments that use the file (each with its instance)."""
        s = await self.schema()
        aliases = list(aliases)
        out: dict[str, Any] = {"lemmy": s.version, "aliases": aliases, "uploaders": [], "posts": [], "comments": []}
        if not aliases:
            return out
        params = {"aliases": aliases, "patterns": _patterns(aliases), "limit": MAX_USES}
        async with self.engine.connect() as conn:
            for row in (await conn.execute(text(s.uploaders), params)).mappings():
                out["uploaders"].append({"alias": row["pictrs_alias"], "account": row["name"], "actor": row["actor"],
                                         "instance": row["domain"]})
            for row in (await conn.execute(text(s.posts), params)).mappings():
                used_as = [f for f in ("url", "thumbnail_url") if row[f] and any(a in row[f] for a in aliases)]
                out["posts"].append({"ap_id": row["ap_id"], "local": bool(row["local"]), "author": row["name"],
                                     "author_actor": row["actor"], "instance": row["domain"],
                                     "used_as": used_as or ["body"]})
            for row in (await conn.execute(text(s.comments), params)).mappings():
                out["comments"].append({"ap_id": row["ap_id"], "local": bool(row["local"]), "author": row["name"],
                                        "author_actor": row["actor"], "instance": row["domain"],
                                        "post": row["post"]})
        return out


async def attribution_for(config: Any, key: str) -> dict[str, Any] | None:
    """Attribution of the object stored under `key`, when [lemmy] is configured (with [pictrs] to find the
    aliases); None when it is not. Errors are returned in the result, never raised: this only informs."""
    from proxy.integrations.pictrs import PictrsPurger

    lemmy = LemmyDatabase.from_config(config.lemmy)
    if lemmy is None:
        return None
    purger = PictrsPurger.from_config(config.pictrs, candidates=lemmy.aliases)
    try:
        if purger is None:
            return {"error": "[pictrs] endpoint is needed to find the file's aliases"}
        aliases, how = await purger.aliases_of(key)
        result = await lemmy.attribute(aliases)
        result["resolved_by"] = how
        return result
    except Exception as exc:  # informational: a missing Lemmy must not break quarantine show
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if purger is not None:
            await purger.close()
        await lemmy.close()


async def attribution_of_item(config: Any, engine: Any, item: dict[str, Any]) -> dict[str, Any] | None:
    """Attribution of a quarantine item: with the aliases its `pictrs-purge` record kept (once pict-rs purged
    the file they cannot be looked up any more), else resolved now. None when [lemmy] is not configured."""
    from proxy.evidence.log import records_for_item

    if not config.lemmy.database_url:
        return None
    known = [a for r in await records_for_item(engine, item["id"]) if r["event"] == "pictrs-purge"
             for a in r["detail"].get("aliases", [])]
    if not known:
        return await attribution_for(config, item["key"])
    lemmy = LemmyDatabase.from_config(config.lemmy)
    assert lemmy is not None
    try:
        result = await lemmy.attribute(sorted(set(known)))
        result["resolved_by"] = "aliases recorded when pict-rs purged the file"
        return result
    except Exception as exc:  # informational: a missing Lemmy must not break the caller
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        await lemmy.close()
