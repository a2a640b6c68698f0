"""A small browser for the web page of ``devflow serve``: cookies, forms, no JavaScript.

``Browser`` keeps the cookies the server sets (as a browser would, by name), sends
``Origin`` with every POST unless told otherwise, and reads the CSRF token of the page
it was last shown. Redirects are not followed unless asked (``follow``).
"""

from __future__ import annotations

import html
import http.client
import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode


@dataclass
class Page:
    status: int
    headers: list[tuple[str, str]]
    text: str

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def set_cookies(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]*)"', self.text)
        assert found, self.text[:2000]
        return html.unescape(found.group(1))

    def hidden(self, name: str) -> str:
        found = re.search(rf'name="{name}" value="([^"]*)"', self.text)
        assert found, f"no {name} in {self.text[:2000]}"
        return html.unescape(found.group(1))

    def testids(self, testid: str) -> list[str]:
        """The opening tags of the elements with this data-testid."""
        return re.findall(rf'<[^>]*data-testid="{testid}"[^>]*>', self.text)

    def flashes(self) -> list[str]:
        return [html.unescape(m) for m in re.findall(
            r'data-testid="flash"[^>]*>([^<]*)<', self.text)]


@dataclass
class Browser:
    port: int
    cookies: dict[str, str] = field(default_factory=dict)
    last: Page | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Page:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            sent = {"Host": f"127.0.0.1:{self.port}"}
            if self.cookies:
                sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            sent.update(headers or {})
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            page = Page(response.status, response.getheaders(),
                        response.read().decode("utf-8"))
        finally:
            conn.close()
        for line in page.set_cookies():
            for name, morsel in SimpleCookie(line).items():
                if morsel["max-age"] == "0" or not morsel.value or morsel.value == '""':
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        if method == "GET" and page.status == 200:
            self.last = page
        return page

    def get(self, path: str, **headers: str) -> Page:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, fields: dict[str, Any], *, origin: str | None = "",
             content_type: str = "application/x-www-form-urlencoded",
             headers: dict[str, str] | None = None) -> Page:
        """POST a form; ``origin``: "" this server's, None none, else that one."""
        sent = {"Content-Type": content_type, **(headers or {})}
        if origin is not None:
            sent["Origin"] = origin or self.origin
        return self.request("POST", path, body=urlencode(fields).encode(), headers=sent)

    def follow(self, page: Page) -> Page:
        assert page.status == 303, (page.status, page.text[:2000])
        location = page.header("location")
        assert location is not None
        return self.get(location)

    def sign_in(self, token: str) -> Page:
        form = self.get("/ui/login")
        assert form.status == 200, form.text
        return self.post("/ui/login", {"token": token, "csrf": form.csrf()})
