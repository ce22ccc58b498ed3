"""Notification pieces on their own: config checks, the kind registry, ORU building, ACK judging, signatures."""

from __future__ import annotations

import pytest
from hl7apy.core import Message
from hl7apy.parser import parse_message

from engine.api import PluginError
from engine.config import ConfigError, load_config
from engine.config.entries import NotificationConfig
from engine.notify.builtin import scanstream_register_notifiers
from engine.notify.hl7 import build_oru, control_id, escape, judge_ack
from engine.notify.registry import NotifierRegistry, StudyFacts
from engine.notify.webhook import signature, verify_signature


def _ack(code: str, acknowledged: str) -> bytes:
    ack = Message("ACK", version="2.5")
    ack.msh.msh_9 = "ACK^R01^ACK"
    ack.msa.msa_1 = code
    ack.msa.msa_2 = acknowledged
    return ack.to_er7().encode()


def test_kind_fields_are_required_and_named(tmp_path) -> None:
    path = tmp_path / "scanstream.toml"
    path.write_text('[[notifications]]\nname = "hook"\nkind = "webhook"\nurl = "ftp://x"\nsecret = "k"\n')
    with pytest.raises(ConfigError, match=r"notifications.*http:// or https://"):
        load_config(path, environ={})
    path.write_text('[[notifications]]\nname = "ris"\nkind = "hl7"\nhost = "ris"\n')
    with pytest.raises(ConfigError, match="needs host and port"):
        load_config(path, environ={})
    path.write_text('[[notifications]]\nname = "ris"\nkind = "hl7"\nhost = "ris"\nport = 2575\n'
                    'triggers = ["sometimes"]\n')
    with pytest.raises(ConfigError, match="triggers"):
        load_config(path, environ={})


def test_notifications_come_from_the_environment_as_json() -> None:
    config = load_config(None, environ={"SCANSTREAM_NOTIFICATIONS": '[{"name": "ris", "kind": "hl7", '
                                                                    '"host": "ris", "port": 2575}]'})
    (entry,) = config.notifications
    assert (entry.kind, entry.port, entry.triggers) == ("hl7", 2575, ["findings", "no_findings", "failed",
                                                                        "study_final"])


def test_an_unknown_kind_is_named_with_the_known_ones() -> None:
    registry = NotifierRegistry()
    scanstream_register_notifiers(registry)
    with pytest.raises(PluginError, match=r'notifications\[0\] \("mail"\).kind: unknown kind .*hl7, webhook'):
        registry.build(NotificationConfig(name="mail", kind="email"), 0)
    with pytest.raises(PluginError, match="twice"):
        registry.add("hl7", lambda config: None)


def test_the_oru_escapes_delimiters_and_keeps_its_control_id() -> None:
    config = NotificationConfig(name="ris", kind="hl7", host="h", port=1)
    event = {"event_id": "job:1:done:1", "trigger": "findings", "summary": "a|b^c&d~e\\f\rg",
             "findings_count": 0, "job": {"model": "m", "model_version": "1"}, "study_instance_uid": "1.2"}
    message = build_oru(event, StudyFacts("P|1", "DOE JANE", ""), config)
    text = message.to_er7()
    assert "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f g" in text and "\rg" not in text
    parsed = parse_message(text, find_groups=False)
    assert parsed.msh.msh_10.value == control_id("job:1:done:1", "ris") == build_oru(event, StudyFacts(),
                                                                                       config).msh.msh_10.value
    assert escape("plain text") == "plain text"


@pytest.mark.parametrize(("code", "verdict"), [("AA", "sent"), ("CA", "sent"), ("AE", "retry"), ("CE", "retry"),
                                               ("AR", "failed"), ("CR", "failed")])
def test_ack_codes_decide(code: str, verdict: str) -> None:
    assert judge_ack(_ack(code, "X1"), "X1").verdict == verdict


def test_an_ack_for_another_message_or_garbage_is_retried() -> None:
    assert judge_ack(_ack("AA", "OTHER"), "X1").verdict == "retry"
    assert judge_ack(b"not hl7 at all", "X1").verdict == "retry"


def test_signature_is_hmac_sha256_of_the_body() -> None:
    import hashlib
    import hmac

    body = b'{"a":1}'
    assert signature("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert verify_signature("k", body, signature("k", body))
    assert not verify_signature("k", body + b" ", signature("k", body))
