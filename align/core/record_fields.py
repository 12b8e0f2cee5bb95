"""Field checks of one data record: a string, a message list, a prompt, a completion.

Each check returns the field's value or raises Bad naming the field; `align.core.records.parse_rows`
adds the record's FILE:LINE, so a problem reads `prefs.jsonl:17: field "chosen": empty`.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")
# ShareGPT-style turns ({"from": "human", "value": ...}) map onto chat roles
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}

Messages = tuple  # tuple of {"role": str, "content": str}


class Bad(Exception):
    """A problem with one record, naming its field; parse_rows adds the FILE:LINE."""

    def __init__(self, field: str | None, reason: str):
        self.field, self.reason = clip(field) if field else field, clip(reason, 1000)
        super().__init__(f'field "{self.field}": {self.reason}' if field else self.reason)


def clip(text: str, limit: int = 80) -> str:
    """A message quoting the user's data stays one readable line however long that data is."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit - 30]}... ({len(text)} characters)"


def text_field(data: dict[str, Any], field: str, *, required: bool = True, allow_empty: bool = False) -> str:
    if field not in data or data[field] is None:
        if required:
            raise Bad(field, "missing")
        return ""
    value = data[field]
    if not isinstance(value, str):
        raise Bad(field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise Bad(field, "empty")
    return value


def messages_field(data: dict[str, Any], field: str) -> Messages:
    value = data.get(field)
    if value is None:
        raise Bad(field, "missing")
    if not isinstance(value, list) or not value:
        raise Bad(field, "expected a non-empty list of messages")
    out = []
    for i, message in enumerate(value):
        name = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise Bad(name, "expected an object with role and content")
        if "role" in message:
            role, content = message.get("role"), message.get("content")
        else:
            role, content = SHAREGPT_ROLES.get(message.get("from")), message.get("value")
        if role not in ROLES:
            raise Bad(f"{name}.role", f"expected one of {', '.join(ROLES)}, got {clip(repr(message.get('role', message.get('from'))))}")
        if not isinstance(content, str):
            raise Bad(f"{name}.content", "missing or not a string")
        out.append({"role": role, "content": content})
    return tuple(out)


def prompt_field(data: dict[str, Any], field: str = "prompt") -> Messages:
    """A prompt as a string (one user turn) or as a message list."""
    value = data.get(field)
    if isinstance(value, list):
        messages = messages_field(data, field)
        if not any(m["content"].strip() for m in messages):
            raise Bad(field, "empty")
        return messages
    return ({"role": "user", "content": text_field(data, field)},)


def completion_field(data: dict[str, Any], field: str, name: str | None = None, *, allow_empty: bool = False) -> str:
    """A completion as a string, or as assistant messages (their contents joined).

    `name` is how errors call the field when it is not a key of `data` (`completions[2]`).
    `allow_empty`: an empty reply is a real answer where replies are compared (in harmlessness data,
    saying nothing was preferred to a harmful reply); a demonstration to imitate must say something."""
    if name is not None:
        return completion_field({name: data[field]}, name, allow_empty=allow_empty)
    value = data.get(field)
    if isinstance(value, list):
        messages = messages_field(data, field)
        if any(m["role"] != "assistant" for m in messages):
            raise Bad(field, "a completion given as messages must hold only assistant turns")
        value = "\n".join(m["content"] for m in messages)
        if not allow_empty and not value.strip():
            raise Bad(field, "empty")
        return value
    return text_field(data, field, allow_empty=allow_empty)
