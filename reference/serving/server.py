"""An OpenAI-compatible HTTP server in front of `LLMEngine` (FastAPI + uvicorn).

Survey section 4 ("API access" and "local deployment"): the same client code that talks to a
hosted model talks to this one, `openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=...)`.
Endpoints: POST /v1/completions, POST /v1/chat/completions (the tokenizer's chat template
applied), both with `stream: true` as server-sent events ("data: {json}\\n\\n", then
"data: [DONE]"); GET /v1/models; GET /health.

The engine steps in its own thread (`EngineLoop`): request handlers only put work on a queue and
wait on an asyncio queue of their own, so no request blocks the engine and the engine batches
every request in flight (continuous batching). A client that disconnects has its request aborted,
which frees its blocks at the next step. Errors have OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, with status 400 (bad request), 401 (no or wrong
API key), 404 (unknown model) or 500.

LoRA adapters registered on the engine (`engine.add_lora`) are models of their own: a request's
`model` is the base model's name, "<base>:<adapter>" or the adapter's bare name (vLLM's
convention), and /v1/models lists each adapter with the base as its parent.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import queue
import secrets
import threading
import time
from collections.abc import Hashable
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations here

from reference.inference.sampling import SamplingParams
from reference.serving.engine import LLMEngine, RequestOutput

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class EngineLoop:
    """Runs `engine.step()` in a background thread while there is work.

    `submit(prompt, params, on_output, lora=None)` queues a request (with LoRA adapter `lora`) (ValueError/TypeError come back at once);
    `on_output(RequestOutput | Exception)` is called from the engine thread after each step that
    advanced it. `abort(request_id)` stops one. `stop()` ends the thread (and aborts what is left).
    """

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._commands: queue.Queue = queue.Queue()
        self._callbacks: dict[Hashable, Any] = {}
        self._stop = threading.Event()
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt, params: SamplingParams, on_output, lora: str | None = None) -> Hashable:
        request_id = f"cmpl-{next(self._ids)}-{secrets.token_hex(4)}"
        done = threading.Event()
        box: dict = {}
        self._commands.put(("add", request_id, prompt, params, on_output, done, box, lora))
        done.wait()
        if "error" in box:
            raise box["error"]
        return request_id

    def abort(self, request_id: Hashable) -> None:
        self._commands.put(("abort", request_id))

    def _drain(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=0.05) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            if command[0] == "add":
                _, request_id, prompt, params, on_output, done, box, lora = command
                try:
                    self.engine.add_request(prompt, params, request_id=request_id, lora=lora)
                    self._callbacks[request_id] = on_output
                except (ValueError, TypeError) as error:
                    box["error"] = error
                done.set()
            elif command[0] == "abort":
                self.engine.abort_request(command[1])
                self._callbacks.pop(command[1], None)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain(block=not self.engine.has_unfinished_requests())
            if not self.engine.has_unfinished_requests():
                continue
            try:
                outputs = self.engine.step()
            except Exception as error:  # a bug must not kill the thread silently: fail the requests in flight
                for request_id, callback in list(self._callbacks.items()):
                    self.engine.abort_request(request_id)
                    callback(error)
                self._callbacks.clear()
                continue
            for output in outputs:
                callback = self._callbacks.get(output.request_id)
                if callback is not None:
                    callback(output)
                if output.finished:
                    self._callbacks.pop(output.request_id, None)
        for request_id in list(self._callbacks):
            self.engine.abort_request(request_id)
        while not self._commands.empty():  # release anyone waiting in submit
            command = self._commands.get_nowait()
            if command[0] == "add":
                command[6]["error"] = ValueError("the server is shutting down")
                command[5].set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _params(body: dict, default_max: int) -> SamplingParams:
    """OpenAI request fields -> SamplingParams (ValueError/TypeError name the field)."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", default_max))
    if max_tokens is None:
        max_tokens = default_max
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise APIError(400, f"max_tokens must be a positive integer, got {max_tokens!r}", param="max_tokens")
    fields = dict(max_tokens=max_tokens)
    for name in ("n", "best_of", "temperature", "top_p", "frequency_penalty", "presence_penalty", "seed"):
        if body.get(name) is not None:
            fields[name] = body[name]
    for name in ("top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos"):  # vLLM's extras
        if body.get(name) is not None:
            fields[name] = body[name]
    if body.get("stop") is not None:
        fields["stop"] = body["stop"]
    if body.get("logprobs") not in (None, False):
        fields["logprobs"] = 1 if body["logprobs"] is True else body["logprobs"]
    try:
        return SamplingParams(**fields)
    except (TypeError, ValueError) as error:
        raise APIError(400, str(error)) from None


def create_app(engine: LLMEngine, model_name: str, *, api_key: str | None = None, chat: bool = True,
               max_tokens_default: int = 256):  # fmt: skip
    """The FastAPI application serving `engine` as `model_name`; its engine thread starts with
    the app and stops with it (`app.state.loop`)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    @asynccontextmanager
    async def lifespan(app):
        app.state.loop = EngineLoop(engine)
        try:
            yield
        finally:
            app.state.loop.stop()

    app = FastAPI(title="Understanding LLMs: local OpenAI-compatible server", lifespan=lifespan)
    app.state.engine, app.state.model_name, app.state.created = engine, model_name, int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, error):
        return JSONResponse(APIError(400, f"invalid request: {error.errors()}").body(), status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request, error):
        return JSONResponse(APIError(500, f"internal error: {error}", type="server_error").body(), status_code=500)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given, f"Bearer {api_key}"):
                error = APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                                 type="invalid_request_error", code="invalid_api_key")  # fmt: skip
                return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health():
        alive = app.state.loop.alive
        return JSONResponse({"status": "ok" if alive else "engine stopped"}, status_code=200 if alive else 503)

    @app.get("/v1/models")
    async def models():
        entry = {"object": "model", "created": app.state.created, "owned_by": "understanding-llms"}
        adapters = [entry | {"id": f"{model_name}:{name}", "parent": model_name} for name in engine.lora_adapters]
        return {"object": "list", "data": [entry | {"id": model_name}] + adapters}

    def _adapter(requested) -> str | None:
        """The LoRA adapter a request's `model` names (None: the base model); 404 for anything else."""
        if requested == model_name:
            return None
        if isinstance(requested, str):
            name = requested[len(model_name) + 1 :] if requested.startswith(model_name + ":") else requested
            if name in engine.lora_adapters:
                return name
        known = ", ".join(f"'{m}'" for m in [model_name] + [f"{model_name}:{a}" for a in engine.lora_adapters])
        raise APIError(404, f"The model '{requested}' does not exist; this server has {known}.",
                       param="model", code="model_not_found")  # fmt: skip

    async def _body(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise APIError(400, f"the request body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        body["_lora"] = _adapter(body.get("model"))
        return body

    async def _submit(request: Request, prompt, params: SamplingParams, lora: str | None = None):
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue = asyncio.Queue()
        try:
            request_id = await asyncio.to_thread(
                app.state.loop.submit, prompt, params, lambda o: loop.call_soon_threadsafe(outputs.put_nowait, o), lora)
        except (ValueError, TypeError) as error:
            raise APIError(400, str(error), param="prompt" if "prompt" in str(error) else None) from None
        return request_id, outputs

    async def _next(request_id, outputs: asyncio.Queue, request: Request) -> RequestOutput | None:
        """The next output, or None once the client has gone (then the request is aborted)."""
        while True:
            try:
                item = await asyncio.wait_for(outputs.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    app.state.loop.abort(request_id)
                    return None
                continue
            if isinstance(item, Exception):
                raise APIError(500, f"the engine failed: {item}", type="server_error")
            return item

    def _usage(out: RequestOutput) -> dict:
        completion = sum(len(c.token_ids) for c in out.outputs)
        return {"prompt_tokens": len(out.prompt_token_ids), "completion_tokens": completion,
                "total_tokens": len(out.prompt_token_ids) + completion}  # fmt: skip

    def _finish(reason: str | None) -> str | None:
        return None if reason is None else "length" if reason == "length" else "stop"

    async def _serve(request: Request, body: dict, prompt, kind: str):
        params = _params(body, max_tokens_default)
        request_id, outputs = await _submit(request, prompt, params, body["_lora"])
        created, name = int(time.time()), body["model"]
        obj = "chat.completion" if kind == "chat" else "text_completion"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_stream(request, request_id, outputs, created, kind, include_usage, name),
                                     media_type="text/event-stream")  # fmt: skip
        final = None
        try:
            while final is None or not final.finished:
                final = await _next(request_id, outputs, request)
                if final is None:
                    return JSONResponse(APIError(499, "client closed the request").body(), status_code=499)
        except asyncio.CancelledError:
            app.state.loop.abort(request_id)
            raise
        choices = []
        for c in final.outputs:
            if kind == "chat":
                choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text},
                                "finish_reason": _finish(c.finish_reason), "logprobs": None})  # fmt: skip
            else:
                choices.append({"index": c.index, "text": c.text, "finish_reason": _finish(c.finish_reason), "logprobs": None})
        return {"id": request_id, "object": obj, "created": created, "model": name, "choices": choices,
                "usage": _usage(final)}  # fmt: skip

    async def _stream(request, request_id, outputs, created, kind, include_usage, model_name=model_name):
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        shown: dict[int, str] = {}
        finished: set[int] = set()

        def event(payload: dict) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        try:
            if kind == "chat":
                yield event({"id": request_id, "object": obj, "created": created, "model": model_name,
                             "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})  # fmt: skip
            while True:
                out = await _next(request_id, outputs, request)
                if out is None:
                    return
                for c in out.outputs:
                    if c.index in finished:
                        continue
                    text = c.text
                    if text.endswith("\ufffd") and c.finish_reason is None:
                        continue  # half a character: wait for the rest
                    delta = text[len(shown.get(c.index, "")):]
                    shown[c.index] = text
                    reason = _finish(c.finish_reason)
                    if reason:
                        finished.add(c.index)
                    if not delta and not reason:
                        continue
                    choice = {"index": c.index, "finish_reason": reason, "logprobs": None}
                    choice |= {"delta": {"content": delta} if delta else {}} if kind == "chat" else {"text": delta}
                    yield event({"id": request_id, "object": obj, "created": created, "model": model_name, "choices": [choice]})
                if out.finished:
                    if include_usage:
                        yield event({"id": request_id, "object": obj, "created": created, "model": model_name,
                                     "choices": [], "usage": _usage(out)})  # fmt: skip
                    yield "data: [DONE]\n\n"
                    return
        except (asyncio.CancelledError, GeneratorExit):
            app.state.loop.abort(request_id)
            raise
        except APIError as error:
            yield event(error.body())
            yield "data: [DONE]\n\n"

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if not isinstance(prompt, (str, list)) or not prompt or (isinstance(prompt, list) and not all(isinstance(t, int) for t in prompt)):
            raise APIError(400, "prompt must be a non-empty string or a list of token ids (one prompt per request)", param="prompt")
        return await _serve(request, body, prompt, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
        ):
            raise APIError(400, "messages must be a non-empty list of {role, content} objects with string content", param="messages")
        from reference.inference.chat import render_chat

        prompt = render_chat(engine.tokenizer, [{"role": m["role"], "content": m["content"]} for m in messages])
        return await _serve(request, body, prompt, "chat")

    return app


class Server:
    """uvicorn serving `create_app(...)` in a background thread: `start()`, `url`, `stop()`.

    For tests and notebooks; `llm-course serve` runs uvicorn in the foreground instead.
    """

    def __init__(self, engine: LLMEngine, model_name: str, *, host: str = DEFAULT_HOST, port: int = 0,
                 api_key: str | None = None) -> None:  # fmt: skip
        import uvicorn

        self.app = create_app(engine, model_name, api_key=api_key)
        self._config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 20.0) -> Server:
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        socket = self._server.servers[0].sockets[0].getsockname()
        return f"http://{socket[0]}:{socket[1]}"

    def stop(self, timeout: float = 20.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(model: str = "smollm2-135m-instruct", *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          api_key: str | None = None, num_blocks: int | None = None, max_num_seqs: int = 16,
          lora: dict[str, str] | None = None) -> None:  # fmt: skip
    """Load a course model and serve it until interrupted (what `llm-course serve` runs); the KV
    cache gets `num_blocks` blocks of 16 tokens, by default as many as fit in 512 MiB. `lora`:
    {name: adapter file} served as models "<model>:<name>"."""
    import uvicorn

    from reference.pretrained import load_pretrained
    from reference.runtime import pick_device

    lm, tokenizer = load_pretrained(model)
    lm = lm.to(pick_device())
    if num_blocks is None:  # 512 MiB of keys and values, whatever the model
        cfg = lm.config
        per_block = 2 * cfg["num_layers"] * 16 * (cfg.get("num_kv_heads") or cfg["num_heads"]) * (cfg["d_model"] // cfg["num_heads"])
        num_blocks = max(1, (512 << 20) // (per_block * next(lm.parameters()).element_size()))
    engine = LLMEngine(lm, tokenizer, num_blocks=num_blocks, max_num_seqs=max_num_seqs)
    for name, path in (lora or {}).items():
        engine.add_lora(name, path)
    print(f"serving {model} at http://{host}:{port}/v1 (OpenAI-compatible); Ctrl-C stops")
    uvicorn.run(create_app(engine, model, api_key=api_key), host=host, port=port, log_level="info")
