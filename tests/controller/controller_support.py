"""Shared bits of the controller tests (named so it cannot clash with tests/ modules): a registered tenant's body, a token."""

from controller.store import writing
from controller.tokens import Role, create_token


def tenant_body(name="北京示例科技有限公司", vip="203.0.113.10", domain="www.example.cn", **extra):
    body = {"name": name, "icp_filing": "京ICP备12345678号-1", "domains": [domain], "vips": [vip],
            "contacts": [{"name": "张三", "email": "security@example.cn", "phone": "+86 10 5555 0100",
                          "webhook_url": "https://hooks.example.cn/security"}],
            "reason": "onboarding"}
    body.update(extra)
    return body


def make_token(engine, name, role):
    with writing(engine) as (conn, head):
        token, _ = create_token(conn, head, name=name, role=Role(role), created_by="test", reason="test token")
    return token


def auth(token):
    return {"Authorization": f"Bearer {token}"}
