"""The README's deployment instructions agree with the kit: the invite link's permissions, the services and
volumes its commands name, and the settings it tells operators to set."""

from __future__ import annotations

import re

import discord

from tests.harness.compose import ROOT, documented_names, load_compose, setting_names, setting_of

README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def test_the_invite_link_asks_for_what_the_bot_uses_and_nothing_more():
    link = re.search(r"https://discord\.com/oauth2/authorize\?\S+", section("Quick start (Discord server owner)"))
    assert link, "no invite link in the quick start"
    query = dict(p.split("=", 1) for p in link.group(0).split("?", 1)[1].split("&"))
    assert set(query["scope"].split("+")) == {"bot", "applications.commands"}
    expected = discord.Permissions(view_channel=True, send_messages=True, send_messages_in_threads=True,
                                   read_message_history=True, attach_files=True)
    assert int(query["permissions"]) == expected.value
    assert not discord.Permissions(int(query["permissions"])).administrator


def test_compose_commands_name_existing_services_and_volumes():
    compose = load_compose()
    services, volumes = set(compose["services"]), set(compose["volumes"])
    text = section("Quick start (Discord server owner)") + section("Operator's guide")
    for command in re.findall(r"docker compose ([^`\n|]+)", text):
        words = command.split()
        if words[0] in ("exec", "logs", "stop", "start", "cp", "run"):
            names = [w for w in words[1:] if not w.startswith("-")]
            name = names[0].split(":")[0]
            assert name in services, f"`docker compose {command}` names no service"
        if words[0] == "up":
            assert set(w for w in words[1:] if not w.startswith("-")) <= services, command
    for volume in re.findall(r"-v loraloop_([a-z-]+):", text):
        assert volume in volumes, volume


def test_the_variables_the_guide_sets_are_documented_and_real():
    env_example = (ROOT / ".env.example").read_text(encoding="utf-8")
    fields = setting_names()
    text = section("Quick start (Discord server owner)") + section("Operator's guide")
    for name in set(re.findall(r"\b((?:DOCKER|LORALOOP|OLLAMA|REDIS|POSTGRES|COMPOSE|HF)_[A-Z_]+)=", text)):
        assert name in documented_names() or name in env_example, f"README sets {name}; .env.example never names it"
        if name.startswith("LORALOOP_"):
            assert setting_of(name) in fields, name
    approval = re.search(r"\*\*Approval settings\.\*\*(.*?)\n\n", text, re.S).group(1)
    named = re.findall(r"`([a-z_.]+)(?::[^`]*)?`", approval)
    assert len(named) >= 8 and set(named) <= fields, set(named) - fields
