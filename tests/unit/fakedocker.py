"""A fake `docker` (for fake_exe) that keeps containers and networks in a JSON file (FAKE_DOCKER_STATE) and
answers the calls the smolmachines backend makes, filters included: `ps`, `network ls/create/rm/inspect`,
`run -d`, `rm -f`, `image inspect`, `save -o`, `logs`, `compose ls`. Every call is recorded there."""

SCRIPT = r"""
import hashlib, fcntl
path = os.environ["FAKE_DOCKER_STATE"]
with open(path + ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        st = json.load(open(path))
    except (OSError, ValueError):
        st = {"containers": [], "networks": [], "calls": []}
    a = sys.argv[1:]
    st["calls"].append(a)
    out, err, rc = [], [], 0

    def labels(row):
        return dict(kv.split("=", 1) for kv in row["Labels"].split(",") if kv)

    def keep(row, filters):
        for f in filters:
            kind, _, val = f.partition("=")
            if kind == "label":
                k, eq, v = val.partition("=")
                lb = labels(row)
                if k not in lb or (eq and lb[k] != v):
                    return False
            elif kind == "name" and val not in row.get("Names", row.get("Name", "")):
                return False
        return True

    def filters(args):
        return [args[i + 1] for i, x in enumerate(args) if x == "--filter"]

    def opts(args, flag):
        return [args[i + 1] for i, x in enumerate(args) if x == flag]

    if a[:1] == ["ps"]:
        out = [json.dumps(r) for r in st["containers"] if keep(r, filters(a))]
    elif a[:2] == ["network", "ls"]:
        out = [json.dumps(r) for r in st["networks"] if keep(r, filters(a))]
    elif a[:2] == ["network", "create"]:
        name = a[-1]
        st["networks"].append({"ID": "n" + hashlib.sha1(name.encode()).hexdigest()[:11], "Name": name,
                               "Labels": ",".join(opts(a, "--label"))})
        out = [name]
    elif a[:2] == ["network", "rm"]:
        for name in a[2:]:
            if not any(n["Name"] == name or n["ID"] == name for n in st["networks"]):
                err.append(f"Error response from daemon: network {name} not found"); rc = 1
            st["networks"] = [n for n in st["networks"] if name not in (n["Name"], n["ID"])]
    elif a[:2] == ["network", "inspect"]:
        out = [a[-1]]
    elif a[:1] == ["run"]:
        name = opts(a, "--name")[0]
        st["containers"].append({"ID": "c" + hashlib.sha1(name.encode()).hexdigest()[:11], "Names": name,
                                 "State": "running", "Labels": ",".join(opts(a, "--label"))})
        for m in opts(a, "--mount"):
            spec = dict(kv.split("=", 1) for kv in m.split(",") if "=" in kv)
            if spec.get("target") == "/bottle-run":
                open(os.path.join(spec["source"], "guard-ready"), "w").write("listening\n")
        out = ["c" + hashlib.sha1(name.encode()).hexdigest()]
    elif a[:2] == ["rm", "-f"]:
        for name in a[2:]:
            st["containers"] = [c for c in st["containers"] if name not in (c["Names"], c["ID"])]
    elif a[:2] == ["image", "inspect"]:
        out = ["sha256:" + hashlib.sha256(r.encode()).hexdigest() for r in a[4:]]
    elif a[:1] == ["save"]:
        open(opts(a, "-o")[0], "w").write("fake image archive\n")
    elif a[:2] == ["compose", "ls"]:
        out = ["[]"]
    json.dump(st, open(path, "w"))
print("\n".join(out))
print("\n".join(err), file=sys.stderr)
sys.exit(rc)
"""
