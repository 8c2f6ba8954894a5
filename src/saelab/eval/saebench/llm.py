"""Chat models for autointerp, without a paid API: any OpenAI-compatible chat endpoint (a local
vLLM, llama.cpp server or ollama; a hosted one works too) or a local Hugging Face causal LM.

Each is a callable: messages [{"role": ..., "content": ...}] -> the reply text (greedy).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

import torch

from ...data.models import load_model
from ...errors import SaelabError, UsageError
from ...options import option


class LLMError(SaelabError, ValueError):
    """A chat model that cannot be reached or answers nonsense."""


class OpenAIChat:
    """POST {url}/chat/completions (url like http://localhost:8000/v1); the key, if any, from
    the environment variable `key_env` (never from a flag, so it stays out of shell history)."""

    def __init__(
        self,
        url: str,
        model: str = "default",
        key_env: str | None = None,
        timeout: float = 120.0,
        max_tokens: int = 120,
    ):
        if not url.startswith(("http://", "https://")):
            raise LLMError(f"--llm-url must start with http:// or https://, got {url!r}")
        if key_env and not os.environ.get(key_env):
            raise LLMError(f"the environment variable {key_env} (--llm-key-env) is not set")
        self.url, self.model, self.timeout, self.max_tokens = (
            url.rstrip("/"),
            model,
            timeout,
            max_tokens,
        )
        self.key = os.environ.get(key_env) if key_env else None
        self.name = f"{model} at {self.url}"

    def __call__(self, messages: list[dict]) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "temperature": 0,
                "max_tokens": self.max_tokens,
            }
        ).encode()
        headers = {
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {self.key}"} if self.key else {}),
        }
        request = urllib.request.Request(
            f"{self.url}/chat/completions", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise LLMError(
                f"{self.url}/chat/completions answered HTTP {err.code}: {err.read()[:200]!r}"
            ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise LLMError(
                f"cannot reach the chat endpoint {self.url} ({getattr(err, 'reason', err)}): is "
                "the server running?"
            ) from None
        except json.JSONDecodeError:
            raise LLMError(f"{self.url}/chat/completions did not answer JSON") from None
        try:
            return str(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise LLMError(
                f"{self.url}/chat/completions answered without choices[0].message.content: "
                f"{str(reply)[:200]}"
            ) from None


class LocalChat:
    """A causal LM loaded with saelab's load_model (a hub id, a directory, a .gguf file or
    builtin:smollm2-135m), prompted through its chat template (or plain 'role: text' lines
    when it has none), greedy decoding."""

    def __init__(self, spec: str, device: str = "cpu", max_tokens: int = 60):
        self.lm = load_model(spec, device=device)
        self.max_tokens, self.name = max_tokens, spec

    def __call__(self, messages: list[dict]) -> str:
        tok = self.lm.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=False
            )
        else:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
            ids = tok(text, return_tensors="pt").input_ids
        ids = ids.to(next(self.lm.model.parameters()).device)
        with torch.inference_mode():
            out = self.lm.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.max_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
        return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@dataclass
class ChatConfig:
    """Which chat model explains and scores latents (autointerp): a local causal LM (`llm`) or
    an OpenAI-compatible endpoint (`llm_url`), exactly one."""

    llm: str | None = option(
        None,
        "autointerp: a local causal LM as explainer and scorer (hub id, directory, .gguf or "
        "builtin:smollm2-135m: a plumbing check, too small to judge)",
        metavar="MODEL",
    )
    llm_url: str | None = option(
        None,
        "autointerp: an OpenAI-compatible chat endpoint, e.g. http://localhost:8000/v1 (vLLM, "
        "llama.cpp server, ollama)",
        metavar="URL",
    )
    llm_model: str = option("default", "the model name sent to --llm-url")
    llm_key_env: str | None = option(
        None, "environment variable holding the endpoint's API key", metavar="VAR"
    )

    def check(self, needed: bool) -> None:
        """One chat model when an evaluation needs one, none otherwise (UsageError)."""
        chat = [flag for flag, value in (("--llm", self.llm), ("--llm-url", self.llm_url)) if value]
        if needed and len(chat) != 1:
            raise UsageError(
                "--evals autointerp needs one chat model: --llm MODEL (a local causal LM) or "
                "--llm-url URL (an OpenAI-compatible endpoint)"
                if not chat
                else "--llm and --llm-url: choose one"
            )
        if not needed and chat:
            raise UsageError(f"{chat[0]} is for --evals autointerp")


def chat_model(
    url: str | None = None,
    spec: str | None = None,
    model: str = "default",
    key_env: str | None = None,
    device: str = "cpu",
):
    """The backend that the flags ask for: exactly one of url and spec."""
    if (url is None) == (spec is None):
        raise LLMError(
            "autointerp needs one chat model: --llm-url URL (an OpenAI-compatible endpoint) or "
            "--llm MODEL (a local causal LM, e.g. builtin:smollm2-135m)"
        )
    return OpenAIChat(url, model, key_env) if url else LocalChat(spec, device)
