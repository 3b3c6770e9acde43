"""The fixed retrieval evaluation set: a corpus from the shared datasets and paraphrased questions about it.

The corpus is every record of identity.json (placeholders filled), alpaca_zh_demo.json and dpo_en_demo.json,
one pair each: the user side as the question, the (chosen) answer as the answer. Each query below is a
paraphrase written for this set, with the corpus question(s) that answer it: a query counts as found at k when
a pair whose question is one of its targets (``is_target``) is among the first k hits. Targets must exist
verbatim in the corpus (``check_targets``), so a changed dataset fails loudly instead of lowering recall quietly.
"""

from __future__ import annotations

import json
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
NAME, AUTHOR = "Loraloop", "the Loraloop team"

# (paraphrase, corpus questions that answer it)
QUERIES: list[tuple[str, tuple[str, ...]]] = [
    # identity.json, English
    ("what's your name?", ("What is your name?", "Do you have a name?", "What are you called?")),
    ("who made you?", ("Who created you?", "Who built you?")),
    ("are you chatgpt from openai?", ("Are you ChatGPT?", "Are you trained by OpenAI?")),
    ("tell me something about yourself", ("Tell me about yourself", "Can you tell me a little bit about yourself?")),
    ("were you made by google?", ("Are you created by Google?",)),
    # identity.json, Chinese
    ("你叫啥名字", ("你有名字吗？", "请告诉我你的名字", "你好，你有自己的名字吗？", "你好呀，你叫什么名字呀",
                  "你叫什么？是谁发明了你？")),
    ("是谁开发了你？", ("你是由谁开发的？", "谁是你的开发者？你叫什么名字？", "你的名字和开发者是谁？")),
    ("你都会做些什么", ("你能做什么？", "你好，你可以做什么", "你好！你是谁？你都能做什么？")),
    ("你会不会泄露我的隐私", ("你会保护用户的隐私吗？",)),
    ("你是ChatGPT吗", ("你是OpenAI开发的ChatGPT吗？", "作为ChatGPT，你的功能是什么？")),
    # alpaca_zh_demo.json
    ("细胞理论和日心说分别是什么？", ("识别并解释给定列表中的两个科学理论：细胞理论和日心说。",)),
    ("人工智能能用在哪些医疗场景", ("描述一个可以从人工智能技术中受益的医疗应用。",)),
    ("帮我写一段公司的使命宣言", ("编写一份可用作公司使命宣言的声明。",)),
    ("电动汽车有哪些相关关键词", ("生成与电动汽车相关的适当关键词。",)),
    ("怎样才能成为一个写作高效的作家", ("如何成为更高效的作家？",)),
    ("什么叫调试工具", ("调试工具是什么？",)),
    ("给这段代码加上错误处理", ("编辑给定的代码以添加错误处理。",)),
    ("列一份团队建设活动的清单", ("创建一个团队建设活动中要使用的活动清单。",)),
    ("已知加速度、初始速度和时间，求车辆的最大速度", ("找出给定加速度、初始速度和经过的时间后车辆的最大速度。",)),
    ("把flavor和satisfied合成一个新词", ("创造一个将“flavor”和“satisfied”两个词组合起来的新词。",)),
    ("API是什么意思", ("什么是API？",)),
    ("时薪30美元的人年薪是多少", ("计算一个每小时赚30美元的人的年薪。",)),
    ("特斯拉Model 3有什么独特的地方", ("特斯拉 Model 3 的独特特点。",)),
    ("举一个常用隐喻的例子", ("提供一个常用的隐喻例子。",)),
    ("写一首描写自然的短诗", ("写一首关于自然的短诗。",)),
    ("用SQL查询每个国家的平均订单价值", ("开发一个SQL查询，以找到不同国家的平均订单价值。",)),
    ("想一个新社交媒体平台的创意", ("生成一个新的社交媒体平台的创意。",)),
    ("云技术有哪些好处", ("分析使用云技术的好处。",)),
    ("第一台印刷机是用哪种语言发明的", ("第一台印刷机是用什么语言发明的？",)),
    ("说一句跟钱有关的谚语", ("提供一句与钱有关的谚语的例子。",)),
    ("把欧洲格式的日期15/10/2021改成美国格式", (
        "将以下日期从欧洲格式（dd/mm/yyyy）转换为美国格式（mm/dd/yyyy）：15/10/2021。",)),
    ("机器学习项目的数据一般来源于哪里", ("典型机器学习项目的数据来源是什么？",)),
    # dpo_en_demo.json
    ("tips to get ready for a job interview", ("How can I best prepare for a job interview?",)),
    ("give me a summary of how quantum computers work", ("Summarize how quantum computing works.",)),
    ("a set has n elements: how many subsets?", ("Given a set S with n elements, how many subsets does S have?",)),
    ("100 birds sit on a fence and half fly away, how many are left",
     ("There are 100 birds sitting on a fence. If half of them decide to fly away, how many birds are left?",)),
    ("which state's motto is live free or die", ('Which US state motto is "Live free or die"?',)),
    ("a Hamlet soliloquy on the troubles of modern technology",
     ("As Hamlet, compose a soliloquy about the difficulties of modern technology.",)),
    ("how do I work out the area of a trapezoid",
     ("Explain, step by step, how to calculate the area of a trapezoid.",)),
    ("research requirements of a biology doctorate",
     ("Can you explain the research requirements for a Doctor of Philosophy in Biology?",)),
    ("houseplants that need little maintenance", ("low-maintenance houseplants",)),
    ("draw a house icon as SVG", ("generate an SVG of a house icon",)),
    ("famous iconic buildings and structures of Europe",
     ("Name ten iconic architectural structures in Europe and provide a brief description of each.",)),
    ("why does a goal setting plan matter", ("Explain why a goal setting plan is important.",)),
    ("design an app for a delivery business", ("Design an app for a delivery company.",)),
    ("explain supply and demand with the housing market",
     ("Explain the economic principle of supply and demand using the example of the housing market.",)),
    ("what caused the American Civil War",
     ("Assume the persona of a historian, and provide an overview explaining the causes of the American Civil War.",)),
    ('who wrote "Boy with Luv" with Halsey', ('Who wrote the song "Boy with Luv" that features Halsey?',)),
    ("Melville's novel about a sailor hunting a white whale",
     ("What 19th-century novel by Herman Melville features a sailor's pursuit of a giant white whale?",)),
    ("best practices to enable customer success", ("tell me the best practices for customer success enablement",)),
    ("what does cognitive dissonance mean", ('Define the term "cognitive dissonance".',)),
    ("strategies for handling customer complaints",
     ("Describe two possible strategies for managing customer complaints",)),
    ("explain Schrodinger's cat", (
        "Explain the concept behind Schrödinger's cat experiment and its implications in quantum mechanics.",)),
    ("what is cloud computing, for a teenager", (
        "Explain to a teenager who has no idea what tech is, what is Cloud Computing?",)),
    ("why did the Harry Potter author create Severus Snape", (
        "What inspired the author of the Harry Potter series to create the character of Severus Snape?",)),
    ("themes and symbols in To Kill a Mockingbird", (
        'Analyze the main themes, symbolism, and character development in Harper Lee\'s "To Kill a Mockingbird."',)),
]

# Questions the corpus has nothing on: at the default cutoff they should retrieve nothing.
OFF_TOPIC: list[str] = [
    "zxqv blorf wibble",
    "what's the weather like in Reykjavik tomorrow?",
    "recommend a good knitting pattern for socks",
    "明天上海会下雨吗",
    "推荐一款适合新手的吉他",
]

# The floor the lexical retriever must keep on QUERIES (measured: see tests/data/test_retrieval.py).
RECALL_AT_3_FLOOR = 0.85


def corpus() -> list[tuple[str, str]]:
    """(question, answer) for every record of the three datasets, in file order."""
    pairs: list[tuple[str, str]] = []
    for record in _load("identity.json"):
        answer = record["output"].replace("{{name}}", NAME).replace("{{author}}", AUTHOR)
        pairs.append((_alpaca_question(record), answer))
    for record in _load("alpaca_zh_demo.json"):
        pairs.append((_alpaca_question(record), record["output"]))
    for record in _load("dpo_en_demo.json"):
        question = "\n".join(m["value"] for m in record["conversations"] if m["from"] == "human")
        pairs.append((question, record["chosen"]["value"]))
    return pairs


def is_target(question: str, targets: tuple[str, ...]) -> bool:
    """A corpus question answers a query when it is one of the targets (an alpaca input may follow it)."""
    return any(question == t or question.startswith(t + "\n") for t in targets)


def check_targets(questions: list[str]) -> None:
    missing = [t for _, targets in QUERIES for t in targets if not any(is_target(q, (t,)) for q in questions)]
    if missing:
        raise AssertionError(f"retrieval set targets missing from the corpus: {missing}")


def _alpaca_question(record: dict[str, str]) -> str:
    return f"{record['instruction']}\n{record['input']}" if record.get("input") else record["instruction"]


def _load(name: str) -> list[dict]:
    return json.loads((DATASETS / name).read_text(encoding="utf-8"))
