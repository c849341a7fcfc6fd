"""Chapter 16: the OpenAI-compatible server end to end, with the official `openai` client and httpx.

A tiny model (llama-tiny and the course tokenizer) keeps it fast. The server runs uvicorn in a
thread on 127.0.0.1 and a free port, started once for the module.
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from reference.pretrained import load_pretrained
from reference.serving.engine import LLMEngine
from reference.serving.server import DEFAULT_HOST, Server

openai = pytest.importorskip("openai")
MODEL = "llama-tiny"


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return load_pretrained(MODEL)


@pytest.fixture(scope="module")
def server(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = LLMEngine(model, tokenizer, block_size=16, num_blocks=96, max_num_seqs=16)
    with Server(engine, MODEL) as srv:
        yield srv
    assert not srv._thread.is_alive()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_binds_localhost_by_default(server):
    assert DEFAULT_HOST == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_completion_equals_the_engine_greedy_output(server, client, model_and_tokenizer):
    from reference.inference.generate import generate

    model, tokenizer = model_and_tokenizer
    prompt = "Once upon a time"
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    expected = generate(model, [tokenizer.encode(prompt)], 12).new_tokens[0]
    assert out.choices[0].text == tokenizer.decode(expected)
    assert out.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert out.usage.completion_tokens == 12 and out.usage.total_tokens == out.usage.prompt_tokens + 12
    assert out.choices[0].finish_reason == "length" and out.object == "text_completion"


def test_streaming_completion_adds_up(client):
    plain = client.completions.create(model=MODEL, prompt="The cat", max_tokens=10, temperature=0)
    pieces = list(client.completions.create(model=MODEL, prompt="The cat", max_tokens=10, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == plain.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"


def test_chat_plain_and_streaming(client):
    messages = [{"role": "user", "content": "Tell me a story."}]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    assert out.choices[0].message.role == "assistant" and out.object == "chat.completion"
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == out.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == out.usage.completion_tokens


def test_parallel_samples(client):
    out = client.completions.create(model=MODEL, prompt="A dog", max_tokens=6, n=3, temperature=1.0, seed=3)
    assert sorted(c.index for c in out.choices) == [0, 1, 2] and out.usage.completion_tokens == 18


@pytest.mark.parametrize("kwargs,status,fragment", [
    (dict(model="no-such-model", prompt="x", max_tokens=2), 404, "does not exist"),
    (dict(model=MODEL, prompt="x", max_tokens=-1), 400, "max_tokens"),
    (dict(model=MODEL, prompt="word " * 600, max_tokens=2), 400, "context"),
    (dict(model=MODEL, prompt="x", max_tokens=2, temperature=-1), 400, "temperature"),
])  # fmt: skip
def test_bad_requests_get_openai_errors(client, kwargs, status, fragment):
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(**kwargs)
    assert info.value.status_code == status
    error = info.value.body if "message" in info.value.body else info.value.body["error"]
    assert fragment in error["message"] and set(error) >= {"message", "type", "param", "code"}


def test_malformed_json(server):
    response = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]


def test_api_key(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with Server(LLMEngine(model, tokenizer, num_blocks=8), MODEL, api_key="sekrit") as srv:
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
        assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekrit", max_retries=0)
        assert good.completions.create(model=MODEL, prompt="Hi", max_tokens=2).usage.completion_tokens == 2
    assert not srv._thread.is_alive() and not srv.app.state.loop.alive  # clean shutdown: no thread left
    assert not any(t in threading.enumerate() for t in (srv._thread, srv.app.state.loop._thread))


def test_load_50_clients_some_disconnecting(server, client):
    """50 concurrent clients, streaming and not, every fourth hanging up mid-stream: every other one
    is answered, the server still serves, and no block is leaked afterwards."""
    engine = server.app.state.engine

    async def one(i, http):
        body = {"model": MODEL, "prompt": f"Story number {i}:", "max_tokens": 8 + i % 17, "temperature": 0}
        if i % 2:
            r = await http.post("/v1/completions", json=body)
            return r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        async with http.stream("POST", "/v1/completions", json=body | {"stream": True, "max_tokens": 40}) as r:
            lines = 0
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    lines += 1
                    if i % 4 == 0 and lines == 2:
                        return "gone"  # leave mid-stream
                    if line == "data: [DONE]":
                        return True
            return False

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            return await asyncio.gather(*(one(i, http) for i in range(50)))

    results = asyncio.run(main())
    assert sum(r is True for r in results) == 37 and sum(r == "gone" for r in results) == 13
    assert client.completions.create(model=MODEL, prompt="Still there?", max_tokens=3).usage.completion_tokens == 3
    for _ in range(100):  # aborted requests are freed by the engine thread within a step or two
        if not engine.has_unfinished_requests():
            break
        threading.Event().wait(0.05)
    engine.block_manager.check_invariants()
    assert engine.block_manager.num_free_blocks == engine.block_manager.device.num_blocks
