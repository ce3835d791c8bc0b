"""The part of Lemmy's database schema that attribution reads, for Lemmy 0.19 and 1.0, as their published
migrations leave it (tables `instance`, `person`, `local_user` (0.19), `local_image`, `post`, `comment`; only
the columns used here, with Lemmy's names and types), plus a small instance's worth of rows.
"""

from __future__ import annotations

SCHEMA = {
    "0.19": """
CREATE TABLE instance (id SERIAL PRIMARY KEY, domain VARCHAR(255) NOT NULL UNIQUE);
CREATE TABLE person (id SERIAL PRIMARY KEY, name VARCHAR(255) NOT NULL, actor_id VARCHAR(255) NOT NULL UNIQUE,
                     local BOOLEAN NOT NULL DEFAULT true, instance_id INT NOT NULL REFERENCES instance(id));
CREATE TABLE local_user (id SERIAL PRIMARY KEY, person_id INT NOT NULL REFERENCES person(id));
CREATE TABLE local_image (local_user_id INT REFERENCES local_user(id), pictrs_alias TEXT PRIMARY KEY,
                          pictrs_delete_token TEXT NOT NULL, published TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE post (id SERIAL PRIMARY KEY, name VARCHAR(200) NOT NULL, url VARCHAR(2000), body TEXT,
                   creator_id INT NOT NULL REFERENCES person(id), thumbnail_url TEXT,
                   ap_id VARCHAR(255) NOT NULL, local BOOLEAN NOT NULL DEFAULT true,
                   published TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE comment (id SERIAL PRIMARY KEY, creator_id INT NOT NULL REFERENCES person(id),
                      post_id INT NOT NULL REFERENCES post(id), content TEXT NOT NULL, ap_id VARCHAR(255) NOT NULL,
                      local BOOLEAN NOT NULL DEFAULT true, published TIMESTAMPTZ NOT NULL DEFAULT now());
""",
    "1.0": """
CREATE TABLE instance (id SERIAL PRIMARY KEY, domain VARCHAR(255) NOT NULL UNIQUE);
CREATE TABLE person (id SERIAL PRIMARY KEY, name VARCHAR(255) NOT NULL, ap_id VARCHAR(255) NOT NULL UNIQUE,
                     local BOOLEAN NOT NULL DEFAULT true, instance_id INT NOT NULL REFERENCES instance(id));
CREATE TABLE local_user (id SERIAL PRIMARY KEY, person_id INT NOT NULL REFERENCES person(id));
CREATE TABLE post (id SERIAL PRIMARY KEY, name VARCHAR(200) NOT NULL, url VARCHAR(2000), body TEXT,
                   creator_id INT NOT NULL REFERENCES person(id), thumbnail_url TEXT,
                   ap_id VARCHAR(255) NOT NULL, local BOOLEAN NOT NULL DEFAULT true,
                   published_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE local_image (pictrs_alias TEXT PRIMARY KEY, published_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                          person_id INT REFERENCES person(id), thumbnail_for_post_id INT REFERENCES post(id));
CREATE TABLE comment (id SERIAL PRIMARY KEY, creator_id INT NOT NULL REFERENCES person(id),
                      post_id INT NOT NULL REFERENCES post(id), content TEXT NOT NULL, ap_id VARCHAR(255) NOT NULL,
                      local BOOLEAN NOT NULL DEFAULT true, published_at TIMESTAMPTZ NOT NULL DEFAULT now());
""",
}

LOCAL = "lemmy.example"
REMOTE = "far.example"


def seed(version: str, *, uploaded: str, other: str, federated_thumb: str) -> str:
    """Rows: `alice` uploads `uploaded` and posts it; `bob` comments with it; `carol` (on far.example) posts a
    link whose thumbnail the local pict-rs cached as `federated_thumb`; `dave` uploads `other`."""
    actor = "actor_id" if version == "0.19" else "ap_id"
    image = f"https://{LOCAL}/pictrs/image/{uploaded}"
    thumb = f"https://{LOCAL}/pictrs/image/{federated_thumb}"
    rows = [
        f"INSERT INTO instance (id, domain) VALUES (1, '{LOCAL}'), (2, '{REMOTE}')",
        f"INSERT INTO person (id, name, {actor}, local, instance_id) VALUES "
        f"(1, 'alice', 'https://{LOCAL}/u/alice', true, 1), (2, 'bob', 'https://{LOCAL}/u/bob', true, 1), "
        f"(3, 'carol', 'https://{REMOTE}/u/carol', false, 2), (4, 'dave', 'https://{LOCAL}/u/dave', true, 1)",
        "INSERT INTO local_user (id, person_id) VALUES (10, 1), (20, 2), (40, 4)",
        "INSERT INTO post (id, name, url, body, creator_id, thumbnail_url, ap_id, local) VALUES "
        f"(100, 'look', '{image}', NULL, 1, NULL, 'https://{LOCAL}/post/100', true), "
        f"(200, 'a link', 'https://{REMOTE}/article', NULL, 3, '{thumb}', 'https://{REMOTE}/post/7', false), "
        f"(300, 'unrelated', NULL, 'text only', 4, NULL, 'https://{LOCAL}/post/300', true)",
        "INSERT INTO comment (id, creator_id, post_id, content, ap_id, local) VALUES "
        f"(1000, 2, 300, 'see ![x]({image})', 'https://{LOCAL}/comment/1000', true), "
        f"(1001, 4, 300, 'nothing here', 'https://{LOCAL}/comment/1001', true)",
    ]
    if version == "0.19":
        rows.append("INSERT INTO local_image (local_user_id, pictrs_alias, pictrs_delete_token) VALUES "
                    f"(10, '{uploaded}', 't1'), (40, '{other}', 't2'), (NULL, '{federated_thumb}', 't3')")
    else:
        rows.append("INSERT INTO local_image (pictrs_alias, person_id, thumbnail_for_post_id) VALUES "
                    f"('{uploaded}', 1, NULL), ('{other}', 4, NULL), ('{federated_thumb}', NULL, 200)")
    return SCHEMA[version] + ";\n".join(rows) + ";\n"
