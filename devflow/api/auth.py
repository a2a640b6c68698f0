"""Who calls: the bearer token, checked on every route against the role the route needs.

The token's actor is the principal of whatever the call does (``access.TOKEN``, the
token's id), never a name in the body: a gate's approvers and the ``operators`` group
are then checked against it by ``access.authorize``, exactly as on the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from devflow import access, model, tokens
from devflow.app import App
from devflow.errors import Code, DevflowError

_BEARER = HTTPBearer(auto_error=False, description="an API token: `devflow tokens create`")

#: OpenAPI extension naming the least role a route needs ("public": none; "signed": no
#: token, the body signed with a trigger's secret)
ROLE_KEY = "x-devflow-role"


@dataclass(frozen=True)
class Caller:
    token: model.ApiToken

    @property
    def actor(self) -> str:
        return self.token.actor

    @property
    def principal(self) -> access.Principal:
        return access.Principal(access.TOKEN, self.token.actor, self.token.prefix)


def app_of(request: Request) -> App:
    found: App = request.app.state.devflow
    return found


def needs(role: str) -> Callable[..., Caller]:
    """A dependency: the caller, whose token is live and whose role reaches ``role``."""
    tokens.check_role(role)

    def caller(request: Request, credentials: Annotated[
            HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> Caller:
        if credentials is None:
            raise DevflowError(Code.UNAUTHENTICATED, "this route needs an API token",
                               hint="send Authorization: Bearer TOKEN (devflow tokens create)")
        token = app_of(request).authenticate(credentials.credentials)
        if not tokens.reaches(token.role, role):
            raise DevflowError(Code.ROLE_FORBIDDEN,
                               f"API token {token.prefix} ({token.actor}) is {token.role}; "
                               f"{request.method} {request.url.path} needs {role}",
                               hint=f"a token with role {role} or above "
                                    f"({', '.join(tokens.ROLES[tokens.rank(role):])})")
        return Caller(token)
    return caller


def role(name: str) -> dict[str, Any]:
    """The route's OpenAPI extra: the least role it needs."""
    return {ROLE_KEY: name}


Viewer = Annotated[Caller, Depends(needs("viewer"))]
Approver = Annotated[Caller, Depends(needs("approver"))]
Operator = Annotated[Caller, Depends(needs("operator"))]
Admin = Annotated[Caller, Depends(needs("admin"))]
AppDep = Annotated[App, Depends(app_of)]
