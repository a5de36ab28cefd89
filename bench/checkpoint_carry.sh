#!/usr/bin/env bash
# Make room to carry a training checkpoint to the device machine, whose working tree may hold at most 64 MiB:
#
#   bash bench/checkpoint_carry.sh prep SRC     # SRC: a checkpoint folder or a folder of checkpoint-*.tar
#   (device call with carry [".whl", "ckpt"] and  bench/train_small.py --resume ckpt ...)
#   bash bench/checkpoint_carry.sh restore
#
# prep copies SRC into ./ckpt (ignored through .git/info/exclude) and takes the bundled weights of tiny and small
# (37 MB) and the committed training checkpoints (bench/checkpoints, e.g. SRC itself) out of the index and into
# .git/info/exclude, so they stay on disk but do not travel; restore puts them back. Nothing is committed; run restore
# before committing. Session 17 resumed `small` run 10 this way.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
weights=(sta_search/small/weights sta_search/tiny/weights)
[ -n "$(git ls-files bench/checkpoints)" ] && weights+=(bench/checkpoints)
exclude=.git/info/exclude
case ${1:-} in
    prep)
        src=${2:?usage: bench/checkpoint_carry.sh prep SRC}
        mkdir -p .git/info && touch "$exclude"
        rm -rf ckpt && mkdir ckpt
        if compgen -G "$src/checkpoint-*.tar" > /dev/null; then cp "$src"/checkpoint-*.tar ckpt/; else cp -r "$src"/. ckpt/; fi
        for p in /ckpt/ "${weights[@]/#//}"; do grep -qxF "${p%/}/" "$exclude" || echo "${p%/}/" >> "$exclude"; done
        git rm -r -q --cached "${weights[@]}"
        echo "ckpt: $(du -sh ckpt | cut -f1); tracked files now $(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1) bytes" ;;
    restore)
        git reset -q -- "${weights[@]}"
        for p in "${weights[@]}"; do sed -i "\#^/$p/\$#d" "$exclude"; done
        git status --short ;;
    *) echo "usage: bench/checkpoint_carry.sh prep SRC | restore" >&2; exit 2 ;;
esac
