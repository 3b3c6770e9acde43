"""Tool use and LLaMA-Factory v1 (issue 29): v1 preference files import, tool calls and tool schemas are kept by
every format that can hold them (and refused by those that cannot), trained in the base's own tool convention,
and shown readably on the review card."""

from __future__ import annotations

import json

import pytest

from data import formats
from data.conversation import Conversation, Message, tool_calls
from data.formats import preference as pf
from tests.data.lf_v1_files import DPO, GLAIVE, v1_dpo, v1_sft, write_jsonl

needs_shared = pytest.mark.skipif(not (GLAIVE.is_file() and DPO.is_file()),
                                  reason="shared/datasets (glaive_toolcall_en_demo.json, dpo_en_demo.json) absent")

WEATHER = json.dumps([{"name": "weather", "description": "The weather in a city.",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                                       "unit": {"type": "string"}},
                                      "required": ["city"]}}])
CALL = Conversation((Message("user", "weather in paris?"),
                     Message("tool_call", '{"name": "weather", "arguments": {"city": "paris"}}'),
                     Message("tool", '{"celsius": 20}'),
                     Message("assistant", "20 degrees.")), tools=WEATHER).validate()


def calls_of(conv: Conversation) -> list[list[tuple[str, object]]]:
    return [[(c.name, c.arguments) for c in tool_calls(m.content)] for m in conv.messages if m.role == "tool_call"]


def shape(conv: Conversation) -> list[tuple[str, str]]:
    """The conversation with each tool call as its calls (the layouts differ between formats, the calls do not)."""
    return [(m.role, json.dumps(calls_of(Conversation((m,)))) if m.role == "tool_call" else m.content)
            for m in conv.messages]


# ---- item 1: LLaMA-Factory v1 preference files ----------------------------------------------------------------


@needs_shared
def test_v1_preference_file_imports_and_exports_with_preferences(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LORALOOP_MAX_STORED_CHARS", "100000")  # 9 of the demo's answers are longer than the default
    ranking = json.loads(DPO.read_text(encoding="utf-8"))
    source = write_jsonl(tmp_path / "v1_dpo_demo.jsonl", [v1_dpo(r) for r in ranking])
    refused = cli("dataset", "import", str(source))
    assert refused.exit_code == 1 and "loraloop preferences import" in refused.output

    result = cli("preferences", "import", str(source), "--approve", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    v1 = pf.read_file(source, "lf-v1")
    distinct = {p.content_hash(): p for _, p in reversed(v1.records)}  # the first of each
    assert (report["format"], report["records"], report["invalid"]) == ("lf-v1", 300, [])
    assert report["imported"] == len(distinct) == 295  # the demo repeats 5 records
    # The same preferences as the sharegpt file they were converted from, loss weights aside.
    sharegpt = pf.read_file(DPO)
    assert [p.content_hash() for _, p in v1.records] == [p.content_hash() for _, p in sharegpt.records]
    assert {m.loss_weight for _, p in v1.records for m in (*p.prompt, p.chosen)} == {0.0, 1.0}

    out = tmp_path / "new" / "folder" / "v1.jsonl"
    assert cli("preferences", "export", "--format", "lf-v1", "--out", str(out)).exit_code == 0
    back = pf.read_file(out)
    assert back.format == "lf-v1" and not back.errors
    assert {p.content_hash(): p for _, p in back.records} == distinct


def test_v1_preference_records_must_share_their_prompt():
    good = {"chosen_messages": [{"role": "user", "content": [{"type": "text", "value": "q"}]},
                                {"role": "assistant", "content": [{"type": "text", "value": "good"}]}],
            "rejected_messages": [{"role": "user", "content": [{"type": "text", "value": "q"}]},
                                  {"role": "assistant", "content": [{"type": "text", "value": "bad"}]}],
            "tools": WEATHER}
    other = {**good, "rejected_messages": [{"role": "user", "content": [{"type": "text", "value": "other q"}]},
                                           good["rejected_messages"][1]]}
    parsed = pf.read_bytes(b"\n".join(json.dumps(r).encode() for r in (good, other)), "p.jsonl", "lf-v1")
    assert [p.chosen.content for _, p in parsed.records] == ["good"] and parsed.records[0][1].tools == WEATHER
    assert "differ only in their last message" in parsed.errors[0].message
    assert pf.read_bytes(pf.dumps([p for _, p in parsed.records], "lf-v1"), "p.jsonl").records == parsed.records


# ---- item 2: tool calls and tool schemas in every format -------------------------------------------------------


@needs_shared
def test_v1_tool_calls_and_tools_read_like_the_sharegpt_file_they_came_from(tmp_path):
    glaive = json.loads(GLAIVE.read_text(encoding="utf-8"))
    v1 = formats.read_file(write_jsonl(tmp_path / "glaive_v1.jsonl", [v1_sft(r) for r in glaive]))
    sharegpt = formats.read_file(GLAIVE)
    assert v1.format == "lf-v1" and not v1.errors and len(v1.records) == len(sharegpt.records) == 300
    with_calls = 0
    for a, b in zip(v1.records, sharegpt.records, strict=True):
        assert shape(a.conversation) == shape(b.conversation)
        assert json.loads(a.conversation.tools or "null") == json.loads(b.conversation.tools or "null")
        with_calls += bool(calls_of(a.conversation))
    assert with_calls > 100


@pytest.mark.parametrize("fmt", ["openai", "lf-v1"])  # sharegpt: the glaive file's round trip (test_real_round_trips)
@pytest.mark.parametrize("jsonl", [True, False])
def test_tool_calls_and_schemas_survive_every_format_that_holds_them(fmt, jsonl):
    two_calls = Conversation((Message("user", "paris and rome?"),
                              Message("tool_call", json.dumps([{"name": "weather", "arguments": {"city": "paris"}},
                                                               {"name": "weather", "arguments": {"city": "rome"}}])),
                              Message("tool", "20 and 25"), Message("assistant", "20 and 25 degrees.")),
                             tools=WEATHER).validate()
    name = "x.jsonl" if jsonl else "x.json"
    back = formats.read_bytes(formats.dumps([CALL, two_calls], fmt, jsonl=jsonl), name)
    assert back.format == fmt and not back.errors
    for original, read in zip([CALL, two_calls], [r.conversation for r in back.records], strict=True):
        assert shape(read) == shape(original)
        schemas = json.loads(read.tools or "null")
        if fmt == "openai":  # OpenAI's tools list wraps each schema
            schemas = [s["function"] for s in schemas]
        assert schemas == json.loads(WEATHER)
    # Read back and written again: the same file (each format keeps its own layout as written).
    again = formats.dumps([r.conversation for r in back.records], fmt, jsonl=jsonl)
    assert again == formats.dumps([r.conversation for r in formats.read_bytes(again, name).records], fmt,
                                  jsonl=jsonl)


def test_formats_without_tool_calls_refuse_them_and_keep_or_refuse_schemas():
    for fmt in ("alpaca", "csv"):
        with pytest.raises(ValueError, match="cannot be written as"):
            formats.dumps([CALL], fmt)
    offered = Conversation(Conversation.qa("hi", "hello").messages, tools=WEATHER)
    assert formats.read_bytes(formats.dumps([offered], "alpaca"), "x.jsonl").records[0].conversation == offered
    with pytest.raises(ValueError, match="tool schemas, which csv cannot hold"):
        formats.dumps([offered], "csv")
    # openai: tools read, not dropped; text beside tool_calls is refused, never dropped.
    record = {"messages": [{"role": "user", "content": "q"},
                           {"role": "assistant", "content": "let me look", "tool_calls": [
                               {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
                           {"role": "tool", "content": "r", "tool_call_id": "c1"},
                           {"role": "assistant", "content": "a"}], "tools": json.loads(WEATHER)}
    result = formats.read_bytes(json.dumps(record).encode(), "x.jsonl")
    assert "text beside tool_calls" in result.errors[0].message
    record["messages"][1]["content"] = None
    conv = formats.read_bytes(json.dumps(record).encode(), "x.jsonl").records[0].conversation
    assert json.loads(conv.tools or "null") == json.loads(WEATHER)
    assert json.loads(formats.dumps([conv], "openai"))["messages"][2]["tool_call_id"] == "c1"


def test_v1_parts_that_cannot_be_kept_are_refused():
    def read(*parts):
        record = {"messages": [{"role": "user", "content": [{"type": "text", "value": "q"}]},
                               {"role": "assistant", "content": list(parts)},
                               {"role": "tool", "content": [{"type": "text", "value": "r"}]},
                               {"role": "assistant", "content": [{"type": "text", "value": "a"}]}]}
        return formats.read_bytes(json.dumps(record).encode(), "x.jsonl", "lf-v1")

    call = {"type": "tool_call", "value": '{"name": "weather", "arguments": {"city": "paris"}}'}
    assert not read(call).errors
    assert "text or reasoning beside tool_call" in read({"type": "text", "value": "x"}, call).errors[0].message
    assert "no tool name" in read({"type": "tool_call", "value": '{"arguments": {}}'}).errors[0].message
    assert "not JSON" in read({"type": "tool_call", "value": "weather(paris)"}).errors[0].message


def test_loss_weights_are_kept_by_lf_v1_and_refused_where_they_would_be_lost():
    weighted = Conversation((Message("user", "q", loss_weight=0.0), Message("assistant", "a", loss_weight=0.5)))
    assert formats.read_bytes(formats.dumps([weighted], "lf-v1"), "x.jsonl").records[0].conversation == weighted
    for fmt in ("alpaca", "sharegpt", "openai", "csv"):
        with pytest.raises(ValueError, match="loss_weight 0.5"):
            formats.dumps([weighted], fmt)
    # The defaults v1's converters write say nothing more than any format does.
    default = Conversation((Message("user", "q", loss_weight=0.0), Message("assistant", "a", loss_weight=1.0)))
    assert formats.dumps([default], "sharegpt") == formats.dumps([Conversation.qa("q", "a")], "sharegpt")


# ---- training: the base's own tool convention ------------------------------------------------------------------


def test_tool_calls_train_in_qwen25s_convention_whatever_the_file_layout(real_qwen2_dir):
    from tests.harness.models import hf_tokenizer
    from trainer.prepare import IGNORE, ChatFormat

    qwen = ChatFormat(hf_tokenizer(real_qwen2_dir))
    openai_layout = Conversation(tuple(
        Message("tool_call", json.dumps([{"id": "c1", "type": "function",
                                          "function": {"name": "weather", "arguments": '{"city": "paris"}'}}]))
        if m.role == "tool_call" else m for m in CALL.messages), tools=WEATHER).validate()
    v1_layout = formats.read_bytes(formats.dumps([CALL], "lf-v1"), "x.jsonl").records[0].conversation
    rendered = qwen.rendered(CALL)
    assert qwen.rendered(openai_layout) == rendered == qwen.rendered(v1_layout)
    # Qwen2.5's tool convention: the schemas in the system turn, the call as JSON in <tool_call>, the result in
    # <tool_response>; the call and the answer are learned, nothing else.
    assert "<tools>\n" + json.dumps(json.loads(WEATHER)[0]) + "\n</tools>" in rendered.text
    assert "<tool_response>\n{\"celsius\": 20}\n</tool_response>" in rendered.text
    call, answer = rendered.trained_text()
    assert call == '<tool_call>\n{"name": "weather", "arguments": {"city": "paris"}}\n</tool_call><|im_end|>'
    assert answer == "20 degrees.<|im_end|>"
    ids, labels = qwen.tokenize(CALL)
    assert qwen.tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE]) == call + answer


def test_a_turn_weighted_zero_is_context_and_dropped_schemas_are_refused(real_qwen2_dir, tiny_llama_dir):
    from transformers import AutoTokenizer

    from tests.harness.models import hf_tokenizer
    from trainer.prepare import ChatFormat

    qwen = ChatFormat(hf_tokenizer(real_qwen2_dir))
    context = Conversation((Message("user", "a?"), Message("assistant", "context answer", loss_weight=0.0),
                            Message("user", "b?"), Message("assistant", "learned answer", loss_weight=1.0)))
    assert qwen.rendered(context).trained_text() == ["learned answer<|im_end|>"]
    # A template with no place for tool schemas (the tiny ChatML one): skipped and counted, never trained without.
    offered = Conversation(Conversation.qa("hi", "hello").messages, tools=WEATHER)
    split = ChatFormat(AutoTokenizer.from_pretrained(tiny_llama_dir)).prepare([offered], 512)
    assert (split.unrenderable, split.examples) == (1, [])


# ---- the review card -----------------------------------------------------------------------------------------


@needs_shared
def test_review_card_shows_tool_calls_and_schemas_readably():
    from bot.views import render_example
    from data.models import Example

    conv = next(r.conversation for r in formats.read_file(GLAIVE).records
                if any(m.role == "tool_call" for m in r.conversation.messages))
    card = render_example(Example(id=1, messages=conv.to_dicts(), tools=conv.tools, tags=[], source="import",
                                  status="pending"), [], limit=100_000)
    call = next(m for m in conv.messages if m.role == "tool_call")
    (parsed,) = tool_calls(call.content)
    assert "**tool call:**" in card.content and "**tool result:**" in card.content
    shown_call = [parsed.name] + [f"  {k}: {json.dumps(v, ensure_ascii=False)}" for k, v in parsed.arguments.items()]
    assert "\n".join(shown_call) in card.content and call.content not in card.content
    schema = json.loads(conv.tools or "")[0]
    params = schema["parameters"]
    names = ", ".join(p if p in params.get("required", []) else f"{p}?" for p in params["properties"])
    assert f"{schema['name']}({names}) — {schema['description']}" in card.content
