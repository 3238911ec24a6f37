"""loragen generate: a task description in, a standard PEFT LoRA adapter for the edge model out."""

from . import add_verb

EXAMPLES = """
  loragen generate --generator runs/gen --task "Task: reverse the word." --out adapters/reverse
  loragen generate --generator runs/gen --task "Task: reverse the word." --out adapters/reverse \\
      --merge-into models/tiny-llama-reverse
  loragen generate --generator runs/gen --tasks tasks.jsonl --out adapters/   # batch: one adapter per line
"""


def register(sub):
    p = add_verb(sub, "generate", "generate a PEFT LoRA adapter from a task description", EXAMPLES)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="the task description (system prompt)")
    src.add_argument("--tasks", help="JSONL with one {\"name\", \"task\"} object per line (batch mode)")
    p.add_argument("--generator", required=True, help="trained generator run directory")
    p.add_argument("--out", required=True, help="adapter directory (batch mode: a new directory holding one per name)")
    p.add_argument("--merge-into", help="also write the edge model with the adapter merged (single task)")
    p.set_defaults(func=run)


def run(args):
    from ..errors import LoragenError
    from ..fsutil import refuse_existing
    from ..generator import load_generator, save_generated
    from ..generator.store import generate_batch, read_task_file

    if args.tasks and args.merge_into:
        raise LoragenError("--merge-into works with a single --task", code="usage")
    refuse_existing(args.out)
    if args.tasks:
        tasks, names = read_task_file(args.tasks)
        g = load_generator(args.generator)
        generate_batch(g, tasks, names, args.out)
        print(f"wrote {len(names)} adapters under {args.out} (generator {g.generator_id})")
        return
    g = load_generator(args.generator)
    save_generated(g, [args.task], [args.out], [args.merge_into] if args.merge_into else None)
    print(f"wrote adapter {args.out} (generator {g.generator_id})")
    if args.merge_into:
        print(f"wrote merged model {args.merge_into}")
