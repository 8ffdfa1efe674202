"""The interactive chat: turns from the microphone, files or the keyboard; answers streamed.

Input modes: ``mic`` (hands-free, the voice-activity endpointer decides when a turn ends),
``ptt`` (Enter starts and stops recording) and ``text`` (typed only). In every mode typed lines
work too; a typed line ending with ':' waits for the next spoken turn and goes with it
(e.g. ``translate this to Chinese:`` then say the sentence).

Speech from the microphone is streamed into the conversation while it is spoken
(``Conversation.begin_audio``): from the moment the endpointer hears speech (with the pre-roll
it keeps), or push-to-talk starts, each block goes to the turn, and a chunked model encodes and
prefills it at once. At the first pause (the endpointer has heard the post-roll's worth of
silence and waits for the rest of the trailing silence to confirm the end), what is left (a chunked
model's last chunk, any other model's whole clip) is encoded and prefilled with the template after
it: when the end is confirmed only the first token remains, and speech that goes on takes that
guess back out. A turn
that is not sent (no speech in a push-to-talk recording, a typed line, Ctrl-C) is cancelled,
which takes it back out of the KV cache.

Answers are spoken while they stream where there is an output device (terminal/voice.py): hands-free by
default, ``--speak`` otherwise; the user's voice over an answer cuts it (turn_taking.BargeIn).

(Over 400 lines: the REPL's loop, its commands and its turns, which share the console and the live meter.)
"""

from __future__ import annotations

import itertools
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from llasm_cli.audio.decode import load_audio
from llasm_cli.audio.geometry import SAMPLE_RATE
from llasm_cli.conversation import Conversation
from llasm_cli.errors import LlasmError, MicrophoneError, NoSpeechError
from llasm_cli.inputs import clean_text, tolerant_stdin
from llasm_cli.llm.engine import Sampling
from llasm_cli.terminal.keys import KeyReader
from llasm_cli.terminal.ui import note as show_note
from llasm_cli.terminal.ui import stream_answer
from llasm_cli.turn_taking import BargeIn, HandsFree, LiveTurn
from llasm_cli.turns import TurnStats

if TYPE_CHECKING:
    from llasm_cli.voices import Voice

HELP = (
    "commands: /file PATH [text]  /reset  /save FILE  /system TEXT  /mute  /voice [SPEC]  /stats  /help  /quit\n"
    "A typed line ending with ':' waits for your next spoken turn and is sent with it."
)
EOF_ = object()
HEARD_SHOWN = 60  # characters of the words heard so far that the level meter shows (the last ones)


@dataclass
class ChatSettings:
    mode: str = "mic"  # "mic" | "ptt" | "text"
    device: str | int | None = None
    trailing_silence: float = 0.6
    max_turn: float = 30.0
    stats: bool = False
    sampling: Sampling | None = None
    max_tokens: int | None = None
    max_audio: float | None = None  # longest audio file accepted (seconds)
    speak: bool | None = None  # answers aloud; None: when listening hands-free and an output device opens
    voice: Voice | None = None  # opened from --voice; None: the best installed voice for each answer's language
    rate: float = 1.0  # speaking rate (--rate)


def stats_line(st: TurnStats) -> str:
    """The --stats line after an answer. A streamed turn's times run from the end of speech; the
    decode rate counts every token decoded after the first, so a one-token answer has one too."""
    head = f"audio {st.audio_seconds:.1f} s · encode {st.encode_ms:.0f} ms · prefill {st.prefill_ms:.0f} ms"
    first = f"first token {st.first_token_ms:.0f} ms"
    if st.streamed:
        how = "encoded whole at the pause, " if st.whole_at_pause else ""
        first += (f" after end of speech ({st.early_audio_seconds:.1f} s of audio, {st.early_positions} positions "
                  f"prefilled while you spoke, {how}{st.early_ms:.0f} ms)")
    tokens = f"{st.answer_tokens} token{'s' * (st.answer_tokens != 1)}"
    if st.decode_ms_per_token is None:
        rate = "decode n/a"
    else:
        rate = f"decode {st.decode_ms_per_token:.0f} ms/token ({st.decode_tokens_per_s:.0f} tok/s)"
    return f"{head} · {first} · {tokens} · {rate}"


def level_bar(db: float, width: int = 16) -> str:
    filled = int(round(max(0.0, min(1.0, (db + 60.0) / 60.0)) * width))
    return "█" * filled + "·" * (width - filled)


class ChatApp:
    """Owns the loop; the conversation (and its KV cache) does the work."""

    def __init__(self, conv: Conversation, settings: ChatSettings, console: Console) -> None:
        self.conv = conv
        self.s = settings
        self.console = console
        self.pending_text: str | None = None
        self.mic = None
        self.endpointer = None
        self.voice = None  # terminal/voice.ChatVoice while answers are spoken
        self.barge_in: BargeIn | None = None

    # --- the loop -------------------------------------------------------------------

    def run(self, first_file: Path | None = None, first_text: str | None = None) -> None:
        _ctrl_c_interrupts()
        tolerant_stdin()  # bytes that are not UTF-8 reach _handle_line (and are replaced there), not an exception
        c = self.console
        m = self.conv.bot.bundle.manifest
        self.pending_text = first_text
        with self.console.status("loading the audio encoder…", spinner="dots"):
            self.conv.bot.warmup_tower()
        self._open_mic()
        self._open_voice()
        spoken = f" · answers spoken ({self.voice.spec or 'voice per language'})" if self.voice is not None else ""
        c.print(f"[bold]llasm[/] · {m.name} · input: {self._mode_label()}{escape(spoken)} · /help for commands · "
                "Ctrl-D to quit")
        keys = KeyReader()
        try:
            if first_file is not None:
                self._spoken_turn(load_audio(first_file, self.s.max_audio), f"file {first_file.name}")
            while True:
                item = self._next_input(keys)
                if item is EOF_:
                    break
                kind, payload = item
                if kind == "audio":  # hands-free turns passed the voice-activity detector already
                    live, audio = payload
                    self._spoken_turn(audio, f"{audio.size / SAMPLE_RATE:.1f} s of speech",
                                      heard=self.s.mode == "mic", live=live)
                elif not self._handle_line(payload):
                    break
        except KeyboardInterrupt:
            pass
        finally:
            if self.mic is not None:
                self.mic.close()
            if self.voice is not None:
                self.voice.close()
            c.print("[dim]bye[/]")

    def _mode_label(self) -> str:
        if self.s.mode == "text":
            return "keyboard"
        name = getattr(self.mic, "name", "")
        return f"{'push-to-talk' if self.s.mode == 'ptt' else 'microphone'} ({name})"

    def _open_mic(self) -> None:
        if self.s.mode == "text":
            return
        try:
            from llasm_cli.audio.endpoint import Endpointer
            from llasm_cli.audio.mic import Microphone

            self.endpointer = Endpointer(trailing_silence=self.s.trailing_silence, max_turn=self.s.max_turn)
            self.mic = Microphone(self.s.device)
            self.mic.open()
        except (MicrophoneError, LlasmError) as exc:
            self.console.print(f"[yellow]no microphone:[/] {escape(str(exc))} — using typed input")
            self.mic, self.s.mode = None, "text"

    def _open_voice(self) -> None:
        """Speak the answers when asked to (--speak), or by default when listening hands-free."""
        if self.s.speak is False or (self.s.speak is None and self.s.mode != "mic"):
            return
        from llasm_cli.terminal.voice import open_chat_voice

        self.voice, why = open_chat_voice(self.s.voice, self.s.rate)
        if self.voice is None:
            self.console.print(f"[yellow]answers are not spoken:[/] {escape(why or '')}")
        elif self.voice.echo_note:  # it still speaks: barge-in then relies on the level alone (use headphones)
            self.console.print(f"[yellow]{escape(self.voice.echo_note)}[/]")
        elif self.mic is not None:
            self.mic = self.voice.hear_through(self.mic)

    def _cut_in(self, why: str) -> None:
        """Stop the answer being spoken; the conversation keeps it as far as it was heard."""
        heard = self.voice.cut() if self.voice is not None else None
        if heard is not None:
            self.conv.cut_answer(heard)
            self.console.print(f"[dim](answer cut: {why})[/]")

    def _next_input(self, keys: KeyReader):
        if self.s.mode == "text":
            try:
                prompt = "[bold cyan]you›[/] " + (f"[dim]({escape(self.pending_text)})[/] " if self.pending_text else "")
                return ("text", self.console.input(prompt))
            except EOFError:
                return EOF_
        with keys:  # cbreak only while listening: typed turns keep the terminal's line editing
            return self._listen(keys)

    # --- listening ------------------------------------------------------------------

    def _listen(self, keys: KeyReader):
        """Hands-free or push-to-talk capture with a live level meter; typed lines interrupt it.

        The turn's audio streams into the conversation as it is heard; a spoken turn comes back as
        ("audio", (LiveTurn, the whole clip)). One that does not come back is cancelled."""
        ptt = self.s.mode == "ptt"
        recording = not ptt
        self.endpointer.reset()
        self.mic.flush()
        chunks: list[np.ndarray] = []
        turn: LiveTurn | None = None  # push-to-talk's
        hands_free = HandsFree(self.conv, self.endpointer, self.pending_text)
        t0, db, speaking = time.monotonic(), -120.0, False
        try:
            with Live(Text(""), console=self.console, transient=True, refresh_per_second=12) as live:
                while True:
                    line = keys.poll(0.0)
                    if line is KeyReader.EOF:
                        return EOF_
                    if line is not None:
                        if not line.startswith("/"):  # a turn (or Enter) stops the answer; a command does not
                            self._cut_in("you typed" if line else "Enter")
                        if ptt and line == "":
                            if recording:
                                audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
                                item, turn = ("audio", (turn, audio)), None
                                return item
                            recording, chunks, t0 = True, [], time.monotonic()
                            self.mic.flush()
                            turn = LiveTurn(self.conv, self.pending_text)
                            continue
                        return ("text", line)
                    chunk = self.mic.read(timeout=0.03)  # without the answer's echo (ChatVoice.hear_through)
                    if chunk.size:
                        db = self.endpointer.level(chunk)
                        if ptt and recording:
                            chunks.append(chunk)
                            turn.feed(chunk)
                        elif not ptt:
                            for block in self._heard_blocks(chunk, db):
                                done = hands_free.push(block)
                                if done is not None:  # the trailing silence confirmed: the turn is sent
                                    return ("audio", done)
                            speaking = hands_free.turn is not None
                    live.update(self._meter(db, time.monotonic() - t0, recording, speaking, keys.buffer))
        finally:  # a turn not handed over (a typed line, end of input, Ctrl-C, an error) is taken back
            if turn is not None:
                turn.cancel()
            hands_free.cancel()

    def _heard_blocks(self, chunk: np.ndarray, db: float) -> list[np.ndarray]:
        """What the endpointer hears of a microphone block: the block, or while an answer is spoken, silence
        until the user's voice is clearly over its echo (turn_taking.BargeIn), then the blocks held back."""
        if self.voice is None or not self.voice.playing:
            self.barge_in = None
            return [chunk]
        if self.barge_in is None:
            self.barge_in = BargeIn(cancelled=self.voice.echo_note is None)
        heard = self.barge_in.hold(chunk, db, self.voice.audible)
        if heard is None:
            return [np.zeros_like(chunk)]
        self._cut_in("you spoke")
        self.barge_in = None
        return heard

    def _meter(self, db: float, elapsed: float, recording: bool, speaking: bool, typed: str) -> Text:
        if self.s.mode == "ptt" and not recording:
            state = "[dim]press Enter to talk[/]"
        else:
            state = "[bold red]● speaking[/]" if speaking else "[green]● listening[/]"
        pending = f"  [dim]({escape(self.pending_text)})[/]" if self.pending_text else ""
        live = self.conv.live
        words = live.heard[-HEARD_SHOWN:] if live is not None and live.heard else ""
        heard = f"  [dim]“{escape(words)}…”[/]" if words else ""  # the words committed while you speak
        return Text.from_markup(
            f"{state} {level_bar(db)} {db:5.0f} dB {elapsed:5.1f} s{pending}{heard}   [bold cyan]you›[/] {escape(typed)}█"
        )

    # --- turns ----------------------------------------------------------------------

    def _handle_line(self, line: str) -> bool:
        """A typed line: a command, text held for the next speech, or a text turn. False quits.
        Text that is not valid Unicode is made valid first (inputs.clean_text), and the chat says so."""
        line, note = clean_text(line, "the line")
        if note:
            show_note(note, out=self.console)
        line = line.strip()
        if not line:
            return True
        if line.startswith("/"):
            return self._command(line)
        if line.endswith(":"):
            self.pending_text = line
            self.console.print(f"[dim]… waiting for speech to go with “{escape(line)}”[/]")
            return True
        self._turn(text=line)
        return True

    def _command(self, line: str) -> bool:
        c = self.console
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            c.print(escape(HELP))
        elif name == "/reset":
            self.conv.reset()
            self.pending_text = None
            c.print("[dim]conversation cleared[/]")
        elif name == "/system":
            self.conv.set_system(arg)
            c.print(f"[dim]system prompt set ({len(arg)} characters); history kept[/]")
        elif name == "/mute":
            if self.voice is None:
                c.print("[yellow]answers are not spoken in this chat[/] (llasm chat --speak)")
            else:
                c.print(f"[dim]answers {'muted' if self.voice.toggle_mute() else 'spoken again'}[/]")
        elif name == "/voice":
            if self.voice is None:
                c.print("[yellow]answers are not spoken in this chat[/] (llasm chat --speak)")
            elif not arg:
                c.print(f"[dim]voice: {escape(self.voice.spec or 'the best installed one per language')}[/] "
                        "(/voice ENGINE:VOICE; `llasm voices` lists them)")
            else:
                try:
                    c.print(f"[dim]voice: {escape(self.voice.set_voice(arg))}[/]")
                except LlasmError as exc:
                    c.print(f"[red]error:[/] {escape(str(exc))}")
        elif name == "/stats":
            self.s.stats = not self.s.stats
            c.print(f"[dim]stats {'on' if self.s.stats else 'off'}[/]")
        elif name == "/save":
            if not arg:
                c.print("[yellow]usage:[/] /save FILE.json")
            else:
                try:
                    path = self.conv.save(Path(arg).expanduser())
                except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
                    c.print(f"[red]error:[/] cannot save {escape(arg)}: {escape(getattr(exc, 'strerror', None) or str(exc))}")
                    return True
                c.print(f"[dim]saved {escape(str(path))}[/]")
        elif name == "/file":
            try:
                parts, why = shlex.split(arg) if arg else [], ""
            except ValueError as exc:  # an unclosed quote, a backslash at the end
                parts, why = [], f" ({str(exc).lower()})"
            if not parts:
                c.print(f"[yellow]usage:[/] /file PATH \\[text]{escape(why)}")
                return True
            try:
                audio = load_audio(Path(parts[0]).expanduser(), self.s.max_audio)
            except LlasmError as exc:
                c.print(f"[red]error:[/] {escape(str(exc))}")
                return True
            if len(parts) > 1:
                self.pending_text = " ".join(parts[1:])
            self._spoken_turn(audio, f"file {Path(parts[0]).name}")
        else:
            c.print(f"[yellow]unknown command {escape(name)}[/] — {escape(HELP.splitlines()[0])}")
        return True

    def _spoken_turn(self, audio: np.ndarray, label: str, heard: bool = False, live: LiveTurn | None = None) -> None:
        """Send a recording, unless it holds no speech (a file of silence, a push-to-talk cough).

        ``live``: the turn streamed while it was recorded; it is finished, or cancelled if not sent."""
        try:
            if audio.size == 0:
                return
            if not heard:
                from llasm_cli.audio.endpoint import require_speech

                try:
                    require_speech(audio, label)
                except NoSpeechError as exc:
                    self.console.print(f"[yellow]not sent:[/] {escape(str(exc).split('; ')[0])}")
                    return
            if live is not None and live.error is not None:
                self.console.print(f"[red]error:[/] {escape(str(live.error))}")
                return
            text, self.pending_text = self.pending_text, None
            self.console.print(f"[bold cyan]you›[/] {escape(text) + ' ' if text else ''}[dim]\\[{escape(label)}][/]")
            self._turn(audio=audio, text=text, live=live)
            live = None
        finally:
            if live is not None:
                live.cancel()

    def _turn(self, audio: np.ndarray | None = None, text: str | None = None, live: LiveTurn | None = None) -> None:
        self._cut_in("a new turn")  # before the turn goes in: the answer it cuts is the last message
        c = self.console
        try:
            with c.status("listening to you…" if audio is not None else "thinking…", spinner="dots"):
                if live is not None and live.stream is not None:
                    stream, live.stream = live.stream, None
                    stream.finish()  # the last chunk and the template: the turn is in the cache
                else:
                    self.conv.add_user(audio, text=text)
                stream = self.conv.respond(self.s.sampling, self.s.max_tokens)
                first = next(stream, None)
        except LlasmError as exc:  # the conversation has already taken the failed turn back
            c.print(f"[red]error:[/] {escape(str(exc))}")
            return
        except KeyboardInterrupt:
            c.print("[dim](interrupted: the turn was not sent)[/]")
            return
        heard = self.conv.stats.heard
        if audio is not None and heard is not None:  # what the model's ears made of it, under the user's turn
            c.print(f"[dim]  heard: “{escape(heard)}”[/]", highlight=False)
        for notice in self.conv.notices:
            c.print(f"[yellow]{notice}[/]")
        self.conv.notices.clear()
        c.print("[bold magenta]llasm›[/]")
        pieces = itertools.chain([first] if first is not None else [], stream)
        spoken = self.voice.start(first or "") if self.voice is not None else None
        try:
            stream_answer(spoken.tee(pieces) if spoken is not None else pieces, out=c)
            if spoken is not None:
                spoken.finish()  # its last clause; it plays on while the chat listens (and may be cut)
        except KeyboardInterrupt:
            stream.close()
            c.print("[dim](interrupted)[/]")
            self._cut_in("Ctrl-C")
        if spoken is not None and spoken.error is not None:
            c.print(f"[yellow]the voice failed:[/] {escape(str(spoken.error))}")
        if self.s.stats:
            c.print(f"[dim]{stats_line(self.conv.stats)}[/]", highlight=False)


def _ctrl_c_interrupts() -> None:
    """Ctrl-C stops an answer, so it must raise KeyboardInterrupt even when llasm was started with
    SIGINT ignored (a background job of a non-interactive shell, some launchers): Python then never
    installs its handler, and Ctrl-C would do nothing at all."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
