"""Retraining in Discord: /retrain propose|status|cancel, the proposal with persistent Approve/Reject buttons,
one live progress message per run, the loss curve and eval table at the end.

The cog owns the orchestrators (one per community, bot/retrain/orchestrator.py) and the scheduler for the bot's
lifetime; it is also their Notifier. An interaction works on its guild's community: its runs, its proposals.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import permissions
from bot.compare import post_comparison
from bot.permissions import IdButton, Only, admins_only, experts_only, say
from bot.retrain import scheduler as retrain_scheduler
from bot.retrain.dispatch import make_dispatcher
from bot.retrain.orchestrator import Orchestrator, orchestrators
from data import runs
from data.errors import RunInProgress, StoreError
from data.models import RUN_TERMINAL, RetrainRun
from data.store import Store
from trainer.progress import RunProgress, Stage

if TYPE_CHECKING:
    from bot.app import LoraloopBot
    from bot.permissions import Interaction

log = logging.getLogger("loraloop.bot.retrain")
NONE = discord.AllowedMentions.none()
STAGE_LABEL: dict[Stage, str] = {
    "queued": "waiting for a worker", "training": "training", "converting": "converting to GGUF",
    "registering": "registering with Ollama", "evaluating": "evaluating against the active model"}


# ---- rendering -------------------------------------------------------------------------------------------


def bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else 0
    return "█" * filled + "░" * (width - filled)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def proposal_text(run: RetrainRun, quorum: int, approvals: int = 0) -> str:
    s = run.summary or {}
    hp = s.get("hyperparameters") or {}
    sources = ", ".join(f"{k} {v}" for k, v in (s.get("sources") or {}).items()) or "—"
    agreement = f"{s['agreement']:.2f}" if isinstance(s.get("agreement"), float) else "—"
    who = f"<@{run.proposed_by}>" if run.proposed_by else f"the {s.get('origin') or 'scheduler'}"
    epochs = hp.get("epochs") or "auto"
    lines = [
        f"**Retrain proposal #{run.id}** (by {who})",
        f"New approved examples since the active model: **{s.get('new_examples', 0)}** "
        f"(approved in all: {s.get('approved_total', 0)}; by source: {sources}; rater agreement {agreement})",
        f"Base `{s.get('base_model')}` → Ollama `{s.get('ollama_base')}`; active now: `{s.get('active') or 'base'}`",
        f"Plan: LoRA r={hp.get('lora_r')} α={hp.get('lora_alpha')}, lr {hp.get('learning_rate')}, epochs {epochs}, "
        f"batch {hp.get('batch_size')}×{hp.get('grad_accum')}, max length {hp.get('max_length')}"
        + (", QLoRA" if hp.get("qlora") else ""),
    ]
    if run.state == "proposed":
        expires = discord.utils.format_dt(run.expires_at, "R") if run.expires_at else "never"
        lines.append(f"Approvals: {approvals}/{quorum} — expires {expires}")
    else:
        lines.append(f"**{run.state}**" + (f": {run.reason}" if run.reason else ""))
    return "\n".join(lines)[:2000]


def progress_text(run: RetrainRun, queued: int | None = None) -> str:
    """A run's progress; ``queued``: its place among every community's runs waiting for a worker (1: next)."""
    p = RunProgress.model_validate(run.progress or {})
    head = f"**Retrain #{run.id}** · " + (STAGE_LABEL[p.stage] if p.stage else run.state)
    if queued is not None:
        head += " · next in line" if queued == 1 else f" · {queued - 1} ahead in the queue"
    if p.tag:
        head += f" · `{p.tag}`"
    lines = [head]
    if p.stage == "training" and p.total:
        step = p.step or 0
        line = f"`{bar(step, p.total)}` {step}/{p.total}"
        if p.loss is not None:
            line += f" · loss {p.loss:.4f}"
        if p.eval_loss is not None:
            line += f" · eval loss {p.eval_loss:.4f}"
        line += f" · ETA {_duration(p.eta_s)}"
        lines.append(line)
    if p.stage == "registering" and p.upload_total:
        sent = p.uploaded or 0
        lines.append(f"`{bar(sent, p.upload_total)}` uploaded {sent / 1e6:,.1f} of {p.upload_total / 1e6:,.1f} MB")
    if run.state in RUN_TERMINAL or run.state == "evaluated":
        lines.append(f"**{run.state}**" + (f": {run.reason}" if run.reason else ""))
    return "\n".join(lines)[:2000]


def result_text(run: RetrainRun, tag: str | None, manual: bool) -> str:
    r = run.result or {}
    lines = [f"**Retrain #{run.id} {run.state}**" + (f" — `{tag}`" if tag else "")]
    m = r.get("metrics") or {}
    if m.get("eval_loss_before") is not None and m.get("eval_loss_after") is not None:
        lines.append(f"eval loss {m['eval_loss_before']:.3f} → {m['eval_loss_after']:.3f} "
                     f"({m.get('steps')} steps, {m.get('train_runtime_s')} s on {m.get('device')})")
    if r.get("table"):
        lines.append("```\n" + r["table"] + "\n```")
    probes = (r.get("probes") or [])[:3]
    for probe in probes:
        lines.append(f"> {probe['question'][:120]}\nbefore: {probe['before'][:150]!r}\nafter: {probe['after'][:150]!r}")
    # General ability kept? A couple of the retention set's answers, the base's and the candidate's.
    for sample in ((m.get("retention") or {}).get("samples") or [])[:2]:
        lines.append(f"> (general) {sample['prompt'][:120]}\nbase: {sample['before'][:120]!r}\n"
                     f"after: {sample['after'][:120]!r}")
    verdict = ""
    if run.state == "promoted":
        verdict = f"✅ The bot now answers with `{tag}`. `/model rollback` switches back."
    elif run.state == "evaluated" and manual:
        verdict = "It passed the gate. Promote it to make the bot answer with it, or discard it."
    elif run.reason:
        verdict = f"❌ Not switched: {run.reason}. The bot keeps answering with the model it has."
    body = "\n".join(lines)
    if not verdict:
        return body[:2000]
    # The verdict is what people act on: the details give way to it under Discord's 2000 characters.
    body = body[:2000 - len(verdict) - 5]
    if body.count("```") % 2:  # cut inside the table: close it, or the verdict would render as code
        body += "```"
    return body + "\n" + verdict[:2000]


# ---- buttons --------------------------------------------------------------------------------------------


class RetrainButton(IdButton, template=r"ll:rt:(?P<kind>approve|reject|promote|discard):(?P<run>\d+)"):
    only = Only(permissions.is_expert, "Only experts can vote on retrains.")
    STYLE = {"approve": (discord.ButtonStyle.success, "Approve"), "reject": (discord.ButtonStyle.danger, "Reject"),
             "promote": (discord.ButtonStyle.success, "Promote"), "discard": (discord.ButtonStyle.danger, "Discard")}

    def __init__(self, kind: str, run_id: int) -> None:
        style, label = self.STYLE[kind]
        super().__init__(discord.ui.Button(style=style, label=label, custom_id=f"ll:rt:{kind}:{run_id}"))
        self.kind, self.run_id = kind, run_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> RetrainButton:
        return cls(match["kind"], int(match["run"]))

    async def callback(self, interaction: Interaction) -> None:  # type: ignore[override]  # see Interaction
        bot = interaction.client
        cog = bot.retrain
        if cog is None:
            return await say(interaction, "Retraining is not running on this bot.")
        orch = cog.orchestrator_of(interaction.guild_id)
        if orch is None:  # IdButton refused it already outside a community; a community not loaded here
            return await say(interaction, permissions.community_refusal(bot.settings, interaction.guild_id)
                             or "Retraining is not running for this server's community.")
        # Votes start runs and promotions talk to Ollama and edit messages: answer within 3 s, report after.
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            if self.kind in ("approve", "reject"):
                outcome, started = await orch.vote(self.run_id, interaction.user.id, self.kind == "approve")
                if self.kind == "reject":
                    text = f"Retrain #{self.run_id} rejected."
                elif started:
                    text = f"Approved — quorum reached, retrain #{self.run_id} is starting."
                elif outcome.run.state == "proposed":
                    text = f"Approved ({len(outcome.approvals)}/{bot.settings.retrain_quorum})."
                else:
                    text = f"Retrain #{self.run_id} is already {outcome.run.state}."
                await say(interaction, text)
                if self.kind == "approve":  # a rejection ends the run: the notifier updated the proposal
                    await cog.refresh_proposal(await runs.get_run(orch.store, self.run_id))
            else:
                run = await orch.decide_promotion(self.run_id, interaction.user.id, self.kind == "promote")
                why = f" ({run.reason})" if run.reason else ""
                await say(interaction, f"Retrain #{self.run_id}: {run.state}{why}")
        except StoreError as exc:
            await say(interaction, str(exc))


def proposal_view(run_id: int, kinds: tuple[str, ...] = ("approve", "reject")) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for kind in kinds:
        view.add_item(RetrainButton(kind, run_id))
    return view


# ---- the cog ---------------------------------------------------------------------------------------------


class RetrainCog(commands.GroupCog, group_name="retrain", group_description="Propose, follow and stop retrains."):
    def __init__(self, bot: LoraloopBot) -> None:
        self.bot = bot
        # One dispatcher for every community: its queue is first come, first served across them.
        self.dispatcher = getattr(bot, "dispatcher", None) or make_dispatcher(bot.settings)
        self.orchestrators: dict[str, Orchestrator] = orchestrators(bot.store, bot.settings, self.dispatcher,
                                                                     bot.ollama, notifier=self)
        for name, orch in self.orchestrators.items():  # the gate's with-retrieval table: the community's own index
            retrievers = getattr(bot, "retrievers", None)
            orch.retriever = retrievers.of(name) if retrievers is not None else bot.retrieval
        self.scheduler: retrain_scheduler.RetrainScheduler | None = None
        self._progress_latest: dict[int, RetrainRun] = {}  # run id -> the newest state not yet shown
        self._progress_editors: dict[int, asyncio.Task[None]] = {}
        super().__init__()

    @property
    def orchestrator(self) -> Orchestrator:
        """The first community's orchestrator (a bot with one server has only that one)."""
        return next(iter(self.orchestrators.values()))

    def orchestrator_of(self, guild_id: int | None) -> Orchestrator | None:
        """The orchestrator of a guild's community; None for a guild outside every community (or a DM)."""
        community = self.bot.settings.community_of_guild(guild_id)
        return self.orchestrators.get(community) if community is not None else None

    async def cog_load(self) -> None:
        retrain_scheduler.bind(self.orchestrators)
        self.bot.retrain = self  # what RetrainButton reaches the orchestrators through
        self.bot.add_dynamic_items(RetrainButton)
        for orch in self.orchestrators.values():  # every community's runs dispatched before a restart
            await orch.recover()
        if getattr(self.bot, "run_scheduler", True):
            try:
                self.scheduler = retrain_scheduler.start_scheduler(self.bot.settings)
            except Exception as exc:  # a bad cron or job store must not stop the bot answering
                log.error("retrain scheduler not started: %s", exc)

    async def cog_unload(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()  # a check still writing finishes before the bot closes the store
        for run_id in list(self._progress_editors):
            await self._stop_progress(run_id)
        for orch in self.orchestrators.values():
            await orch.close(release_dispatcher=False)
        await self.dispatcher.close()
        retrain_scheduler.bind(None)
        self.bot.retrain = None

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]  # see Interaction
        """A retrain is a community's: refused (one line) outside a configured guild."""
        refusal = permissions.community_refusal(self.bot.settings, interaction.guild_id)
        if refusal is not None or self.orchestrator_of(interaction.guild_id) is None:
            await say(interaction, refusal or "Retraining is not running for this server's community.")
            return False
        return True

    def _orch(self, interaction: Interaction) -> Orchestrator:
        orch = self.orchestrator_of(interaction.guild_id)
        assert orch is not None  # interaction_check let only a community's interactions through
        return orch

    # ---- commands ---------------------------------------------------------------------------------

    @app_commands.command(name="propose", description="Propose a retrain with the new approved examples (experts).")
    @experts_only("Only experts can propose a retrain.")
    async def propose(self, interaction: Interaction) -> None:
        orch = self._orch(interaction)
        roles = self.bot.settings.roles_for(interaction.guild_id)
        channel_id = (roles.experts_channel_id or self.bot.settings.experts_channel_of(orch.community)
                      or interaction.channel_id)
        await interaction.response.defer(ephemeral=True, thinking=True)  # counting examples, posting the proposal
        try:
            run = await orch.propose(by=interaction.user.id, guild_id=interaction.guild_id, channel_id=channel_id)
        except RunInProgress as exc:
            return await say(interaction, str(exc))
        except StoreError as exc:
            return await say(interaction, f"No retrain proposed: {exc}")
        await say(interaction, f"Retrain #{run.id} proposed in <#{channel_id}>: it starts when "
                               f"{self.bot.settings.retrain_quorum} experts approve.")

    @app_commands.command(name="status", description="The current retrain and the last few.")
    async def status(self, interaction: Interaction) -> None:
        store = self._orch(interaction).store
        recent = await runs.list_runs(store, 5)
        if not recent:
            return await say(interaction, "No retrains yet.")
        lines = []
        for run in recent:
            if run.state in RUN_TERMINAL:
                lines.append(f"#{run.id} **{run.state}**" + (f" — {run.reason}" if run.reason else ""))
            elif run.state == "proposed":
                votes = await runs.votes(store, run.id)
                lines.append(f"#{run.id} **proposed** — {len(votes.approvals)}/{self.bot.settings.retrain_quorum} "
                             f"approvals, {run.summary.get('new_examples')} new examples")
            else:
                lines.append(progress_text(run, await runs.queue_position(store, run.id)))
        await say(interaction, "\n".join(lines)[:2000])

    @app_commands.command(name="cancel", description="Stop the open proposal or the running retrain (admins).")
    @admins_only("Only admins can cancel a retrain.")
    async def cancel(self, interaction: Interaction) -> None:
        orch = self._orch(interaction)
        run = await runs.open_run(orch.store)
        if run is None:
            return await say(interaction, "Nothing to cancel: no retrain is open.")
        await interaction.response.defer(ephemeral=True)
        run = await orch.cancel(run.id, by=interaction.user.id)
        await say(interaction, f"Retrain #{run.id} {run.state}" + (f": {run.reason}" if run.reason else ""))

    # ---- Notifier ---------------------------------------------------------------------------------

    def _channel(self, run: RetrainRun) -> discord.PartialMessageable | None:
        return self.bot.get_partial_messageable(run.channel_id) if run.channel_id else None

    def _store(self, run: RetrainRun) -> Store:
        """The store of the run's community (the orchestrator's that told us)."""
        orch = self.orchestrators.get(run.community or "")
        return orch.store if orch is not None else self.bot.store.scoped(run.community)

    async def proposed(self, run: RetrainRun) -> None:
        channel = self._channel(run)
        if channel is None:
            log.warning("retrain #%d proposed, but no experts channel is configured to announce it", run.id)
            return
        message = await channel.send(proposal_text(run, self.bot.settings.retrain_quorum),
                                     view=proposal_view(run.id), allowed_mentions=NONE)
        await runs.set_run(self._store(run), run.id, message_id=message.id)

    async def refresh_proposal(self, run: RetrainRun) -> None:
        channel = self._channel(run)
        if channel is None or run.message_id is None:
            return
        votes = await runs.votes(self._store(run), run.id)
        view = proposal_view(run.id) if run.state == "proposed" else None
        try:
            await channel.get_partial_message(run.message_id).edit(
                content=proposal_text(run, self.bot.settings.retrain_quorum, len(votes.approvals)), view=view)
        except discord.HTTPException as exc:
            log.warning("could not update the proposal message of #%d: %s", run.id, exc)

    async def reminder(self, run: RetrainRun) -> None:
        channel = self._channel(run)
        if channel is None:
            return
        votes = await runs.votes(self._store(run), run.id)
        expires = discord.utils.format_dt(run.expires_at, "R") if run.expires_at else "soon"
        await channel.send(f"⏰ Retrain proposal #{run.id} expires {expires} with {len(votes.approvals)}/"
                           f"{self.bot.settings.retrain_quorum} approvals.", allowed_mentions=NONE,
                           reference=_reference(run))  # type: ignore[arg-type]  # None is send's own default

    async def progress(self, run: RetrainRun) -> None:
        channel = self._channel(run)
        if channel is None:
            return
        if run.status_message_id is None:
            await self.refresh_proposal(run)
            queued = await runs.queue_position(self._store(run), run.id) if run.state == "snapshotted" else None
            message = await channel.send(progress_text(run, queued), allowed_mentions=NONE)
            await runs.set_run(self._store(run), run.id, status_message_id=message.id)
            return
        # Edits coalesce and run beside the orchestrator: a rate-limited edit (discord.py sleeps out a 429)
        # never holds up the run, and when it goes through it shows the latest state, not a backlog.
        self._progress_latest[run.id] = run
        editor = self._progress_editors.get(run.id)
        if editor is None or editor.done():
            self._progress_editors[run.id] = asyncio.create_task(
                self._edit_progress(run.id, channel, run.status_message_id), name=f"retrain-{run.id}-progress")

    async def _edit_progress(self, run_id: int, channel: discord.PartialMessageable, message_id: int) -> None:
        while (run := self._progress_latest.pop(run_id, None)) is not None:
            try:
                await channel.get_partial_message(message_id).edit(content=progress_text(run))
            except discord.HTTPException as exc:
                log.warning("retrain #%d: the progress message was not updated: %s", run_id, exc)

    async def _stop_progress(self, run_id: int) -> None:
        """Drop pending progress edits: the final state is written next (cancelling an edit is harmless)."""
        self._progress_latest.pop(run_id, None)
        editor = self._progress_editors.pop(run_id, None)
        if editor is not None and not editor.done():
            editor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await editor

    async def finished(self, run: RetrainRun, loss_png: bytes | None) -> None:
        channel = self._channel(run)
        if channel is None:
            return
        await self._stop_progress(run.id)
        if run.status_message_id is not None:
            await channel.get_partial_message(run.status_message_id).edit(content=progress_text(run))
        if run.state in ("rejected", "expired", "cancelled") and run.model_version_id is None:
            await self.refresh_proposal(run)  # a proposal that never ran: its message says why
            return
        tag = None
        if run.model_version_id is not None:
            tag = (await self._store(run).get_model_version(run.model_version_id)).tag
        manual = self.bot.settings.retrain_promotion == "manual"
        kwargs: dict[str, Any] = {"allowed_mentions": NONE}
        if loss_png:
            kwargs["file"] = discord.File(io.BytesIO(loss_png), filename=f"retrain-{run.id}-loss.png")
        compared = run.state == "evaluated" and manual
        if compared:
            kwargs["view"] = proposal_view(run.id, ("promote", "discard"))
        message = await channel.send(result_text(run, tag, manual), **kwargs)
        # In automatic mode, on request, the experts still judge the promoted version blind (for information: it
        # is already answering, and /model rollback undoes it if the tally goes against it).
        informative = run.state == "promoted" and not manual and self.bot.settings.review.compare_automatic
        if compared or informative:  # a failure to post it leaves plain Promote/Discard
            try:
                if await post_comparison(self.bot, run, channel) is not None and compared:
                    await message.edit(view=None)  # Promote lives on the comparison, enabled by its tally
            except (StoreError, discord.HTTPException) as exc:
                log.warning("retrain #%d: the blind comparison was not posted: %s", run.id, exc)


def _reference(run: RetrainRun) -> discord.MessageReference | None:
    if run.message_id is None or run.channel_id is None:
        return None
    return discord.MessageReference(message_id=run.message_id, channel_id=run.channel_id, fail_if_not_exists=False)


async def setup(bot: LoraloopBot) -> None:
    await bot.add_cog(RetrainCog(bot))
