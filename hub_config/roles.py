"""JupyterHub RBAC for the platform: custom scopes, roles and the groups that carry them
(JupyterHub creates the groups from the roles; the authenticator fills them).

The authenticator puts people into the groups below (``manage_groups``); the roles give
the groups their scopes. The default ``user`` role is narrowed so that signing in alone
does not let anyone start a server: the REST API refuses exactly what the pages hide.
"""

from __future__ import annotations

OPERATORS, REVIEWERS, GPU_USERS = "operators", "reviewers", "gpu-users"

ADMIN_SCOPE = "custom:aipower:admin"
REVIEW_SCOPE = "custom:aipower:review"
HUB_AGENT_SCOPE = "custom:aipower:hub"

CUSTOM_SCOPES = {
    ADMIN_SCOPE: {"description": "Operate the platform in the quota service (projects, points)."},
    REVIEW_SCOPE: {"description": "Review applications in the quota service."},
    HUB_AGENT_SCOPE: {
        "description": "The hub asks the quota service for access and meters servers."
    },
}


# what jupyterhub-idle-culler 2.x needs (its README): the user list, each user's activity and
# servers, and stopping servers; no admin:users, since it never deletes users (no --cull-users)
IDLE_CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


def load_roles(
    quota_service: str = "quota",
    hub_agent: str = "aipower-hub-agent",
    idle_culler: str = "idle-culler",
) -> list[dict]:
    quota_access = f"access:services!service={quota_service}"
    return [
        {
            # everyone who signs in: see themselves and reach the quota service's pages;
            # no `servers` scope, so no server start or stop through pages or API
            "name": "user",
            "description": "Signed-in person without a usable project",
            "scopes": [
                "read:users!user",
                "users:activity!user",
                "read:servers!user",
                "tokens!user",
                quota_access,
            ],
        },
        {
            "name": "gpu-user",
            "description": "Member of an approved project inside its window: may run GPU servers",
            "scopes": ["servers!user", "access:servers!user"],
            "groups": [GPU_USERS],
        },
        {
            "name": "operator",
            "description": "Platform operator: the service's admin pages (hub admin comes with admin=True)",
            "scopes": [ADMIN_SCOPE, quota_access],
            "groups": [OPERATORS],
        },
        {
            "name": "reviewer",
            "description": "Reviewer of applications",
            "scopes": [REVIEW_SCOPE, quota_access],
            "groups": [REVIEWERS],
        },
        {
            # the quota service stops servers that can no longer be paid for
            "name": "quota-service",
            "description": "Least privilege for the quota service's own token",
            "scopes": ["list:users", "read:users:name", "read:servers", "servers"],
            "services": [quota_service],
        },
        {
            "name": "hub-agent",
            "description": "The hub's identity towards the quota service",
            "scopes": [HUB_AGENT_SCOPE],
            "services": [hub_agent],
        },
        {
            # stops servers idle by Jupyter activity; the spawner closes their metering
            "name": "idle-culler",
            "description": "Least privilege for jupyterhub-idle-culler",
            "scopes": list(IDLE_CULLER_SCOPES),
            "services": [idle_culler],
        },
    ]
