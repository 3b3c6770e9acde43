"""Persistent buttons and the modals they open. Every custom id carries the ids it needs, so the buttons
keep working after a restart (discord.py ``DynamicItem``). Handlers are thin: parse → store → render."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from bot import permissions
from data.conversation import Conversation, InvalidConversation
from data.models import Example
from data.store import StoreError

if TYPE_CHECKING:
    from bot.app import LoraloopBot

MODAL_TEXT_MAX = 4000  # Discord's own limit for a text input


def core(interaction: discord.Interaction) -> LoraloopBot:
    return interaction.client  # type: ignore[return-value]


async def say(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral answer, whether or not the interaction was answered already."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())
    else:
        await interaction.response.send_message(text, ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())


# ---- feedback on answers --------------------------------------------------------------------------------


class FeedbackButton(discord.ui.DynamicItem[discord.ui.Button],
                     template=r"ll:fb:(?P<kind>up|down|fix):(?P<answer>\d+)"):
    LABELS = {"up": ("👍", None), "down": ("👎", None), "fix": (None, "Suggest a better answer")}

    def __init__(self, kind: str, answer_id: int) -> None:
        emoji, label = self.LABELS[kind]
        super().__init__(discord.ui.Button(style=discord.ButtonStyle.secondary, emoji=emoji, label=label,
                                           custom_id=f"ll:fb:{kind}:{answer_id}"))
        self.kind, self.answer_id = kind, answer_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> FeedbackButton:
        return cls(match["kind"], int(match["answer"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = core(interaction)
        if self.kind == "fix":
            try:
                answer = await bot.store.get_answer(self.answer_id)
            except StoreError as exc:
                return await say(interaction, str(exc))
            question = next((m["content"] for m in reversed(answer.prompt) if m["role"] == "user"), "")
            return await interaction.response.send_modal(SuggestModal(self.answer_id, question, answer.answer))
        try:
            await bot.store.add_feedback(self.answer_id, interaction.user.id, 1 if self.kind == "up" else -1)
        except StoreError as exc:
            return await say(interaction, str(exc))
        await say(interaction, "Thanks, noted 👍" if self.kind == "up" else
                  "Thanks, noted 👎 — you can also suggest a better answer.")


def feedback_view(answer_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for kind in ("up", "down", "fix"):
        view.add_item(FeedbackButton(kind, answer_id))
    return view


class SuggestModal(discord.ui.Modal):
    def __init__(self, answer_id: int, question: str, current: str) -> None:
        super().__init__(title="Suggest a better answer", custom_id=f"ll:suggest:{answer_id}", timeout=900)
        self.answer_id = answer_id
        self.question = discord.ui.TextInput(label="Question", style=discord.TextStyle.paragraph,
                                             default=question[:MODAL_TEXT_MAX], max_length=MODAL_TEXT_MAX)
        self.better = discord.ui.TextInput(label="Better answer", style=discord.TextStyle.paragraph,
                                           placeholder=current[:100], max_length=MODAL_TEXT_MAX)
        self.add_item(self.question)
        self.add_item(self.better)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        bot = core(interaction)
        conversation = Conversation.qa(self.question.value.strip(), self.better.value.strip())
        try:
            example = await bot.store.add_example(
                conversation, source="correction", author_id=interaction.user.id, guild_id=interaction.guild_id,
                answer_id=self.answer_id, max_chars=bot.settings.max_field_chars,
            )
        except (StoreError, InvalidConversation) as exc:
            return await say(interaction, f"Not saved: {exc}")
        await say(interaction, f"Thanks! Your answer is waiting for expert review (example #{example.id}).")


# ---- teaching ------------------------------------------------------------------------------------------


class TeachModal(discord.ui.Modal, title="Teach the bot"):
    question = discord.ui.TextInput(label="Question", style=discord.TextStyle.paragraph, max_length=MODAL_TEXT_MAX)
    answer = discord.ui.TextInput(label="Answer", style=discord.TextStyle.paragraph, max_length=MODAL_TEXT_MAX)
    system = discord.ui.TextInput(label="System prompt / context (optional)", style=discord.TextStyle.paragraph,
                                  required=False, max_length=MODAL_TEXT_MAX)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        bot = core(interaction)
        conversation = Conversation.qa(self.question.value.strip(), self.answer.value.strip(),
                                       self.system.value.strip() or None)
        try:
            example = await bot.store.add_example(
                conversation, source="teach", author_id=interaction.user.id, guild_id=interaction.guild_id,
                max_chars=bot.settings.max_field_chars,
            )
        except (StoreError, InvalidConversation) as exc:
            return await say(interaction, f"Not saved: {exc}")
        await say(interaction, f"Thanks! Example #{example.id} is waiting for expert review.")


# ---- review --------------------------------------------------------------------------------------------


def render_example(example: Example, scores: list[int]) -> str:
    lines = [f"**Example #{example.id}** · source: {example.source} · status: {example.status}"]
    for m in example.messages:
        text = m["content"] if len(m["content"]) <= 700 else m["content"][:700] + "…"
        lines.append(f"**{m['role']}:** {text}")
    if scores:
        from data.review import disagreement

        lines.append(f"Ratings: {', '.join(map(str, scores))} · mean {sum(scores) / len(scores):.1f} · "
                     f"disagreement {disagreement(scores):.2f}")
    else:
        lines.append("No ratings yet.")
    out = "\n".join(lines)
    return out if len(out) <= 2000 else out[:1990] + "…"


class ReviewButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=r"ll:rv:(?P<action>[1-5]|approve|reject|edit):(?P<example>\d+)"):
    def __init__(self, action: str, example_id: int) -> None:
        style = {"approve": discord.ButtonStyle.success, "reject": discord.ButtonStyle.danger}.get(
            action, discord.ButtonStyle.secondary)
        label = {"approve": "Approve", "reject": "Reject", "edit": "Edit"}.get(action, action)
        super().__init__(discord.ui.Button(style=style, label=label, custom_id=f"ll:rv:{action}:{example_id}",
                                           row=0 if action.isdigit() else 1))
        self.action, self.example_id = action, example_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> ReviewButton:
        return cls(match["action"], int(match["example"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = core(interaction)
        guild_id = interaction.guild_id
        if self.action in ("approve", "reject"):
            if not permissions.is_admin(bot.settings, guild_id, interaction.user):
                return await say(interaction, "Only admins can approve or reject directly; experts rate 1–5.")
        elif not permissions.is_expert(bot.settings, guild_id, interaction.user):
            return await say(interaction, "Only experts can review examples.")
        try:
            if self.action == "edit":
                example = await bot.store.get_example(self.example_id)
                return await interaction.response.send_modal(EditModal(example))
            if self.action.isdigit():
                outcome = await bot.store.rate(self.example_id, interaction.user.id, int(self.action))
                done = f"Rated #{self.example_id} {self.action}/5 (mean {outcome.mean:.1f} of {len(outcome.scores)})"
                if outcome.decided:
                    done += f" → {outcome.decided}"
            else:
                status = "approved" if self.action == "approve" else "rejected"
                await bot.store.set_example_status(self.example_id, status)
                done = f"Example #{self.example_id} {status}."
        except StoreError as exc:
            return await say(interaction, str(exc))
        await show_next_for_review(interaction, prefix=done, edit=True)


def review_view(example_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in ("1", "2", "3", "4", "5", "approve", "reject", "edit"):
        view.add_item(ReviewButton(action, example_id))
    return view


async def show_next_for_review(interaction: discord.Interaction, prefix: str = "", edit: bool = False) -> None:
    bot = core(interaction)
    example = await bot.store.next_for_review(interaction.user.id, interaction.guild_id)
    head = f"{prefix}\n\n" if prefix else ""
    if example is None:
        content, view = head + "Nothing left to review — thank you!", None
    else:
        scores = [r.score for r in await bot.store.ratings_for(example.id)]
        content, view = head + render_example(example, scores), review_view(example.id)
    kwargs: dict[str, Any] = {"content": content[:2000], "allowed_mentions": discord.AllowedMentions.none()}
    if edit:
        await interaction.response.edit_message(view=view, **kwargs)
    else:
        await interaction.response.send_message(ephemeral=True, view=view or discord.utils.MISSING, **kwargs)


class EditModal(discord.ui.Modal):
    def __init__(self, example: Example) -> None:
        super().__init__(title=f"Edit example #{example.id}", custom_id=f"ll:edit:{example.id}", timeout=900)
        self.example_id = example.id
        conv = Conversation.from_dicts(example.messages)
        turns = conv.turns
        self.multi_turn = len(turns) > 2 or conv.has_tools
        self.system_text = conv.system
        self.question = discord.ui.TextInput(label="Question", style=discord.TextStyle.paragraph,
                                             default=turns[-2].content[:MODAL_TEXT_MAX], max_length=MODAL_TEXT_MAX)
        self.answer = discord.ui.TextInput(label="Answer", style=discord.TextStyle.paragraph,
                                           default=turns[-1].content[:MODAL_TEXT_MAX], max_length=MODAL_TEXT_MAX)
        self.add_item(self.question)
        self.add_item(self.answer)
        self.original = conv

    async def on_submit(self, interaction: discord.Interaction) -> None:
        bot = core(interaction)
        messages = list(self.original.to_dicts())
        messages[-2] = {"role": messages[-2]["role"], "content": self.question.value.strip()}
        messages[-1] = {"role": "assistant", "content": self.answer.value.strip()}
        try:
            copy = await bot.store.edit_example(self.example_id, Conversation.from_dicts(messages, self.original.tags,
                                                                                          self.original.tools),
                                                editor_id=interaction.user.id, max_chars=bot.settings.max_field_chars)
        except (StoreError, InvalidConversation) as exc:
            return await say(interaction, f"Not saved: {exc}")
        await say(interaction, f"Saved as example #{copy.id} (pending review); #{self.example_id} is superseded.")


DYNAMIC_ITEMS = (FeedbackButton, ReviewButton)
