"""`tracekit chat`: CWM's chat (its reasoning system prompt, <think> ... </think>, then the
answer) with any model spec, interactive or one --message."""

from __future__ import annotations

import sys

import click

from tracekit.cli.common import (
    Failure,
    device_option,
    exit_help,
    model_options,
    model_spec,
    print_error,
    sampling_options,
    stderr,
    typed_lines,
)
from tracekit.cli.exits import EXIT_MODEL, EXIT_TOO_LONG

PROMPT = "you> "
COMMANDS = ("/reset", "/quit", "/exit")
HELP_LINE = ("(an empty line does nothing; /reset forgets the conversation; /quit or Ctrl-D ends; "
             "// sends a message that starts with /)")


@click.command(epilog=exit_help(0, 2, 7, 10))
@model_options()
@click.option("--message", "-m", metavar="TEXT", help="Send TEXT, print the reply, and exit "
              "(no prompt, nothing read from the terminal).")
@click.option("--system", metavar="TEXT", help="The system prompt. Default: CWM's reasoning "
              "prompt (the model thinks inside <think> ... </think>, then answers).")
@click.option("--no-thinking", is_flag=True, help="Render the prompt without opening a "
              "<think> block (the template's enable_thinking=False).")
@click.option("--hide-thinking", is_flag=True, help="Print only the answer (the thinking is "
              "shown dimmed by default).")
@click.option("--drop-previous-thinking", is_flag=True, help="Earlier turns lose their "
              "<think> blocks in the prompt (the template's preserve_previous_think=False).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Tokens one reply may take (thinking included).")
@sampling_options()
@device_option
def chat(spec, openai_model, message, system, no_thinking, hide_thinking,
         drop_previous_thinking, max_tokens, temperature, seed, device) -> None:
    """Chat with a model in CWM's chat format: the reply's thinking dimmed, its answer plain.

    The prompt is rendered with the checkpoint's own chat template when it ships one
    (tokenizer_config.json or chat_template.jinja, as facebook/cwm does), else with
    tracekit's (README: Chat and reasoning). tracekit's bundled model is a trace model: it
    was never trained to chat, so its replies show the mechanism, not an assistant.

    \b
    tracekit chat --model ./cwm-checkpoint
    tracekit chat --model openai:http://localhost:8000 --openai-model facebook/cwm
    tracekit chat -m "What does sorted('bca') return?" --hide-thinking
    """
    from tracekit.format.prompts import REASONING_SYSTEM_PROMPT
    from tracekit.model.errors import BackendError
    from tracekit.prediction.chat import ChatError, ChatOptions, checkpoint_template
    from tracekit.prediction.predict import Sampling, load_predictor

    parsed = model_spec(spec, openai_model)
    try:
        predictor = load_predictor(parsed, device=device)
        template = checkpoint_template(None if parsed.served else parsed.directory())
    except (BackendError, ChatError) as exc:
        raise Failure("model", str(exc), EXIT_MODEL) from None
    conversation = Conversation(
        predictor, template,
        ChatOptions(not no_thinking, not drop_previous_thinking,
                    REASONING_SYSTEM_PROMPT if system is None else system),
        max_tokens, Sampling(temperature, seed=seed), hide_thinking)
    if message is not None:
        failed = conversation.send(message)
        if failed:
            sys.exit(failed)
        return
    stderr.print(HELP_LINE, highlight=False)
    _interact(conversation)


class Conversation:
    """The messages so far and one model to continue them."""

    def __init__(self, predictor, template, options, max_tokens: int, sampling,
                 hide_thinking: bool):
        self.predictor, self.template, self.options = predictor, template, options
        self.max_tokens, self.sampling, self.hide_thinking = max_tokens, sampling, hide_thinking
        self.messages: list[dict] = []
        self.styled = sys.stdout.isatty()

    def send(self, text: str) -> int:
        """One user turn and the model's reply, printed as it comes; 0, or the exit code of
        why the model could not answer (the turn is then forgotten)."""
        from tracekit.model.errors import BackendError, ContextError
        from tracekit.prediction.chat import ChatError, chat_turn

        messages = [*self.messages, {"role": "user", "content": text}]
        printer = _Printer(self.options.enable_thinking, self.hide_thinking, self.styled)
        try:
            reply = chat_turn(self.predictor, messages, self.options, self.template,
                              self.max_tokens, self.sampling, printer.write)
        except ContextError as exc:
            printer.end()
            print_error("too long", str(exc))
            return EXIT_TOO_LONG
        except (ChatError, BackendError) as exc:
            printer.end()
            print_error("model", str(exc))
            return EXIT_MODEL
        except KeyboardInterrupt:
            printer.end()
            print_error("chat", "interrupted: the reply is dropped", "yellow")
            return 0
        printer.end()
        if not reply.stopped:
            print_error("chat", "the reply reached its token budget before it ended"
                        + (" (still thinking)" if reply.truncated_in_thinking else ""),
                        "yellow")
        opened = "<think>\n" if reply.thinking is not None else ""
        self.messages = [*messages, {"role": "assistant", "content": opened + reply.text}]
        return 0


class _Printer:
    """Writes a streamed reply: the thinking dimmed (or not at all), the answer plain."""

    def __init__(self, thinking: bool, hide: bool, styled: bool):
        self.in_thinking, self.hide, self.styled = thinking, hide, styled
        self.pending = ""  # text that may be the start of "</think>"

    def write(self, text: str) -> None:
        from tracekit.prediction.chat import THINK_END

        text = self.pending + text
        self.pending = ""
        while text:
            if not self.in_thinking:
                self._out(text, dim=False)
                return
            at = text.find(THINK_END)
            if at < 0:
                keep = next((k for k in range(len(THINK_END) - 1, 0, -1)
                             if text.endswith(THINK_END[:k])), 0)
                self._out(text[:len(text) - keep], dim=True)
                self.pending = text[len(text) - keep:]
                return
            self._out(text[:at + len(THINK_END)], dim=True)
            self.in_thinking = False
            text = text[at + len(THINK_END):].lstrip("\n")

    def _out(self, text: str, dim: bool) -> None:
        if not text or (dim and self.hide):
            return
        if dim and self.styled:
            text = click.style(text, dim=True)
        click.echo(text, nl=False)
        sys.stdout.flush()

    def end(self) -> None:
        self._out(self.pending, dim=self.in_thinking)
        self.pending = ""
        click.echo()


def _interact(conversation: Conversation) -> None:
    for line in typed_lines(PROMPT):
        command = line.strip()
        if command in ("/quit", "/exit"):
            return
        if command == "/reset":
            conversation.messages = []
            stderr.print("(forgotten)", highlight=False)
        elif command.startswith("//"):
            conversation.send(line.replace("//", "/", 1))
        elif command.startswith("/") and command.split()[0] not in COMMANDS:
            print_error("chat", f"unknown command {command.split()[0]!r}: the commands are "
                        f"{', '.join(COMMANDS)} (to send a message that starts with /, "
                        "type // instead)")
        elif command:
            conversation.send(line)
