"""Reference (a): the floor of any Tornado frontend.

A bare Tornado handler on ``POST /<app>/predict`` that parses the same JSON body as
clipper-nb (with the same parser, orjson), checks it holds ``input`` or
``input_batch``, and answers a constant in Clipper's shape. No engine, no queue, no
worker, no metrics: whatever clipper-nb adds on top of this is its own cost.

Run as a process of its own, like the real server::

    python benchmarks/bare_tornado.py --port 8123
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
import tornado.web

_ONE = b'{"query_id":0,"output":0.0,"default":false}'


class ConstantPredictHandler(tornado.web.RequestHandler):
    """Parse the body, answer a constant (one row, or one per row of ``input_batch``)."""

    def check_xsrf_cookie(self) -> None:  # a JSON API, as clipper-nb's query API
        pass

    async def post(self, app: str) -> None:
        body = orjson.loads(self.request.body)
        self.set_header("Content-Type", "application/json")
        if "input" in body:
            self.finish(_ONE)
        else:
            rows = len(body["input_batch"])
            self.finish(b'{"batch_predictions":[' + b",".join([_ONE] * rows) + b"]}")


async def serve(port: int) -> None:
    app = tornado.web.Application([(r"/([^/]+)/predict", ConstantPredictHandler)], compress_response=False)
    app.listen(port, "127.0.0.1")
    print(f"bare tornado on 127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
