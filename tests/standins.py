"""Real local stand-ins for the services pvbuild talks to, on 127.0.0.1 (used by tests and bench).

``FixtureSite`` serves a copy of the reference site's structure (list pages and articles) with
configurable latency, GBK pages, missing articles and duplicate links, and logs every request.
``FakeOpenAI`` is an OpenAI-compatible chat completions server whose answers and faults are
scripted per article; it logs every request body.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


class _Running:
    """Base: starts a ThreadingHTTPServer for a handler class bound to this object."""

    def __init__(self) -> None:
        self.server: _Server | None = None
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def __enter__(self) -> Any:
        self.server = _Server(("127.0.0.1", 0), self.handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_port}"


@dataclass
class FixtureArticle:
    file_id: str
    title: str
    date: str
    paragraphs: list[str]
    day: str = "20250801"
    gbk: bool = False
    missing: bool = False  # linked from a list page but 404

    @property
    def path(self) -> str:
        return f"/zc/{self.day}/{self.file_id}.shtml"


def article_html(article: FixtureArticle, charset: str) -> str:
    body = "\n".join(f"<p>{html.escape(p)}</p>" for p in article.paragraphs)
    return (f'<html><head><meta http-equiv="Content-Type" content="text/html; charset={charset}">'
            f"<title>{html.escape(article.title)}</title></head><body><div class='nav'>首页 政策 市场</div>"
            f"<div class='cc-article'><h1>{html.escape(article.title)}</h1><div class='cc-headline'>"
            f"<span>{article.date}</span></div><div id='article_cont'>{body}</div></div>"
            f"<div class='footer'>版权所有 北极星电力网（测试副本）</div></body></html>")


def list_html(items: list[tuple[str, FixtureArticle]]) -> str:
    lis = "\n".join(f'<li><a href="{href}" title="{html.escape(a.title)}">{html.escape(a.title)}</a>'
                    f"<span>{a.date}</span></li>" for href, a in items)
    return (f"<html><head><meta charset='utf-8'><title>政策</title></head><body><div class='header'>北极星光伏网"
            f"</div><div class='cc-layout-3'><div class='box'><div class='center'><ul class='cc-list-content'>"
            f"\n{lis}\n</ul></div><div class='page'>1 2 3</div></div></div>"
            f"<div class='footer'>{'北极星光伏网政策频道 测试副本 ' * 20}</div></body></html>")


@dataclass
class FixtureSite(_Running):
    """A copy of the reference site: list pages ``/zc/{page}`` and article pages."""

    pages: list[list[FixtureArticle]]
    latency: float = 0.0
    absolute_every: int = 2  # every n-th link on a list page is absolute (the rest relative)
    robots_txt: str = ""  # served at /robots.txt when set (404 otherwise, as the reference site does)
    requests: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        _Running.__init__(self)

    def articles(self) -> Iterator[FixtureArticle]:
        seen = set()
        for page in self.pages:
            for article in page:
                if article.path not in seen:
                    seen.add(article.path)
                    yield article

    def handler(self) -> type[BaseHTTPRequestHandler]:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with site.lock:
                    site.requests[self.path] += 1
                if site.latency:
                    time.sleep(site.latency)
                body, content_type = site.render(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Type", "text/html")
                    self.end_headers()
                    self.wfile.write(b"<html><body>404 Not Found</body></html>")
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def render(self, path: str) -> tuple[bytes | None, str]:
        if path == "/robots.txt" and self.robots_txt:
            return self.robots_txt.encode("utf-8"), "text/plain"
        if path.startswith("/zc/") and path[4:].isdigit():
            number = int(path[4:])
            if not 1 <= number <= len(self.pages):
                return None, ""
            items = [(a.path if i % self.absolute_every else self.url + a.path, a)
                     for i, a in enumerate(self.pages[number - 1])]
            return list_html(items).encode("utf-8"), "text/html; charset=utf-8"
        for article in self.articles():
            if article.path == path and not article.missing:
                if article.gbk:  # charset only in the page's meta tag, as old GBK sites do
                    return article_html(article, "gbk").encode("gbk"), "text/html"
                return article_html(article, "utf-8").encode("utf-8"), "text/html; charset=utf-8"
        return None, ""


_TOKEN = re.compile(r"[A-Za-z]+|[0-9]+|[^\sA-Za-z0-9]")


def count_tokens(text: str) -> int:
    """The fakes' tokenizer, standing in for the model's: a CJK character or a punctuation mark is a
    token, as is a run of Latin letters or of digits."""
    return len(_TOKEN.findall(text))


def conversation_for(user_message: str, pairs: int = 2) -> list[dict[str, str]]:
    title = user_message.split("\n", 1)[0].removeprefix("标题：")
    turns = []
    for number in range(1, pairs + 1):
        turns += [{"role": "user", "content": f"关于《{title}》的问题{number}？"},
                  {"role": "assistant", "content": f"根据文章，《{title}》的回答{number}。"}]
    return turns


@dataclass
class FakeOpenAI(_Running):
    """An OpenAI-compatible ``/v1/chat/completions`` server.

    ``script`` maps a substring of the article message to the list of outcomes of successive
    calls for that article ("ok", "429", "500", "quota", "auth", "invalid_json", "wrong_roles",
    "empty", "schema_rejected", "repeats" (a question asked twice), and the hostile ones: "html"
    (a 200 with an HTML page), "cut_off" (a 200 whose JSON body ends early), "length" (an answer
    stopped at max_tokens), "trickle" (the body a byte every ``trickle_delay`` seconds)); once a
    list runs out, calls succeed. ``reject_json_schema``
    answers 400 to strict-schema requests, like servers without structured outputs. Usage is 100
    prompt and 50 completion tokens a call, or with ``count`` set the tokens ``count_tokens`` finds
    (added up in ``tokens`` over every answer).
    """

    latency: float = 0.0
    script: dict[str, list[str]] = field(default_factory=dict)
    reject_json_schema: bool = False
    trickle_delay: float = 0.5
    calls: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    count: bool = False
    tokens: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        _Running.__init__(self)

    def usage(self, body: dict[str, Any], content: str) -> dict[str, int]:
        if not self.count:
            return {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
        prompt = sum(count_tokens(message["content"]) for message in body["messages"])
        completion = count_tokens(content)
        with self.lock:
            self.tokens.update({"prompt_tokens": prompt, "completion_tokens": completion})
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def outcome(self, user_message: str) -> str:
        with self.lock:
            for marker, outcomes in self.script.items():
                if marker in user_message and outcomes:
                    return outcomes.pop(0)
        return "ok"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def reply(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.calls.append(body)
                    fake.headers.append(dict(self.headers))
                if fake.latency:
                    time.sleep(fake.latency)
                user = body["messages"][-1]["content"]
                kind = body.get("response_format", {}).get("type")
                if fake.reject_json_schema and kind == "json_schema":
                    return self.reply(400, {"error": {"message": "response_format json_schema is not supported",
                                                      "type": "invalid_request_error", "code": None}})
                self.respond(fake.outcome(user), user, body)

            def respond(self, outcome: str, user: str, body: dict[str, Any]) -> None:
                errors = {
                    "429": (429, "Rate limit reached for requests", "rate_limit_exceeded"),
                    "quota": (429, "You exceeded your current quota", "insufficient_quota"),
                    "500": (500, "The server had an error", None),
                    "auth": (401, "Incorrect API key provided", "invalid_api_key"),
                }
                if outcome in ("html", "cut_off", "trickle"):
                    return self.hostile(outcome, user, body)
                if outcome in errors:
                    status, message, code = errors[outcome]
                    return self.reply(status, {"error": {"message": message, "type": code, "code": code}},
                                      {"Retry-After": "0"} if status == 429 else None)
                contents = {
                    "invalid_json": "这不是 JSON {",
                    "wrong_roles": json.dumps({"conversations": [{"role": "user", "content": "问"},
                                                                 {"role": "user", "content": "又问"}]}),
                    "empty": json.dumps({"conversations": []}),
                    # the first question asked again, once with spaces and ASCII punctuation
                    "repeats": json.dumps({"conversations": conversation_for(user) + [
                        {"role": "user", "content": " " + conversation_for(user)[0]["content"].replace("？", " ?")},
                        {"role": "assistant", "content": "同一个问题的另一个回答。"}]}, ensure_ascii=False),
                }
                content = contents.get(outcome) or json.dumps({"conversations": conversation_for(user)},
                                                              ensure_ascii=False)
                if outcome == "length":
                    content = content[:len(content) // 2]
                self.reply(200, self.completion(body, content, "length" if outcome == "length" else "stop"))

            @staticmethod
            def completion(body: dict[str, Any], content: str, finish: str) -> dict[str, Any]:
                return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": finish,
                                     "message": {"role": "assistant", "content": content}}],
                        "usage": fake.usage(body, content)}

            def hostile(self, outcome: str, user: str, body: dict[str, Any]) -> None:
                if outcome == "html":
                    data, kind = b"<html><body><h1>502 Bad Gateway</h1> nginx</body></html>", "text/html"
                else:
                    content = json.dumps({"conversations": conversation_for(user)}, ensure_ascii=False)
                    data = json.dumps(self.completion(body, content, "stop"), ensure_ascii=False).encode("utf-8")
                    data, kind = (data[:len(data) // 2] if outcome == "cut_off" else data), "application/json"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if outcome != "trickle":
                    self.wfile.write(data)
                    return
                for index in range(len(data)):  # a byte at a time: each read is quick, the whole is not
                    try:
                        self.wfile.write(data[index:index + 1])
                        self.wfile.flush()
                    except OSError:
                        return  # the client gave up
                    time.sleep(fake.trickle_delay)

        return Handler


@dataclass
class FakeHub(_Running):
    """The part of the Hugging Face Hub's HTTP API that ``huggingface_hub`` uses to create a dataset repo and
    commit files to it (files sent inline, "regular" upload mode). Commits land in ``repos[repo][path]``;
    ``requests`` logs method and path, ``tokens`` the bearer tokens seen."""

    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    private: dict[str, bool] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        _Running.__init__(self)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def reply(self, status: int, value: Any) -> None:
                body = json.dumps(value).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def seen(self) -> None:
                with hub.lock:
                    hub.requests.append(f"{self.command} {self.path}")
                    hub.tokens.add(self.headers.get("Authorization", "").removeprefix("Bearer "))

            def do_GET(self) -> None:
                self.seen()
                parts = self.path.split("?")[0].split("/")  # /api/datasets/{org}/{name}/revision/{rev}
                repo = "/".join(parts[3:5])
                if len(parts) >= 5 and parts[1:3] == ["api", "datasets"] and repo in hub.repos:
                    self.reply(200, {"id": repo, "sha": "0" * 40, "private": hub.private.get(repo, False),
                                     "siblings": [{"rfilename": name} for name in sorted(hub.repos[repo])]})
                else:
                    self.reply(404, {"error": f"Repository {repo} not found"})

            def do_POST(self) -> None:
                self.seen()
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    request = json.loads(self.body())
                    repo = f"{request.get('organization') or 'user'}/{request['name']}" \
                        if "/" not in request["name"] else request["name"]
                    with hub.lock:
                        hub.repos.setdefault(repo, {})
                        hub.private[repo] = bool(request.get("private")) or request.get("visibility") == "private"
                    self.reply(200, {"url": f"{hub.url}/datasets/{repo}", "name": repo})
                    return
                if path == "/api/validate-yaml":  # the Hub checks a README's metadata block before a commit
                    self.body()
                    self.reply(200, {"errors": [], "warnings": []})
                    return
                parts = path.split("/")  # /api/datasets/{org}/{name}/{preupload|commit}/{revision}
                repo, action = "/".join(parts[3:5]), parts[5] if len(parts) > 5 else ""
                if repo not in hub.repos:
                    self.reply(404, {"error": f"Repository {repo} not found"})
                elif action == "preupload":
                    files = json.loads(self.body())["files"]
                    self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
                elif action == "commit":
                    import base64

                    for line in self.body().decode("utf-8").splitlines():
                        entry = json.loads(line)
                        if entry.get("key") == "file":
                            value = entry["value"]
                            with hub.lock:
                                hub.repos[repo][value["path"]] = base64.b64decode(value["content"])
                    self.reply(200, {"commitUrl": f"{hub.url}/datasets/{repo}/commit/{'1' * 40}",
                                     "commitOid": "1" * 40, "pullRequestUrl": None})
                else:
                    self.reply(404, {"error": f"unknown: {path}"})

        return Handler
