#!/bin/bash
# Runs the same tiny configs with an older checkout (OLD_TREE, e.g. a9440d1, before the
# run-graph refactor) and this one, sharing one cache, and compares their metrics.json with
# distillkit reproduce's compare (metrics equal, losses within 1e-6).
# usage: git worktree add --detach /tmp/dk-old a9440d1
#        OLD_TREE=/tmp/dk-old bash bench/refactor_equivalence.sh
set -u
OLD_TREE=${OLD_TREE:?set OLD_TREE to a worktree of the commit to compare with}
NEW_TREE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$NEW_TREE/.venv/bin/python}
OUT=${OUT:-/tmp/dk-refactor-equivalence}; rm -rf $OUT; mkdir -p $OUT
export DISTILLKIT_CACHE=$OUT/cache
i=0
while IFS= read -r extra; do
  i=$((i+1))
  for side in old main; do
    tree=$OLD_TREE; [ $side = main ] && tree=$NEW_TREE
    (cd $tree && PYTHONPATH=$tree/src $PY -m distillkit $extra hydra.run.dir=$OUT/$i-$side > $OUT/$i-$side.log 2>&1) || echo "case $i $side failed rc=$?"
  done
  PYTHONPATH=$NEW_TREE/src $PY -c "
import json,sys
from distillkit.app.reproduce import compare
a=json.load(open('$OUT/$i-old/metrics.json')); b=json.load(open('$OUT/$i-main/metrics.json'))
d=compare(a,b)
print('case $i [$extra]:', 'IDENTICAL' if not d else d, '| student acc', a['student']['accuracy'], b['student']['accuracy'], '| teacher', a['teacher']['accuracy'], b['teacher']['accuracy'], '| teacher stage', a['stages']['teacher'], '->', b['stages']['teacher'])
"
done <<'CASES'
teacher=tiny student=tiny data=tiny trainer=debug trainer.eval_batch_size=32 loss=kd
teacher=tiny student=tiny data=tiny trainer=debug trainer.eval_batch_size=32 loss=mmd mapping=uniform
teacher=tiny student=tiny data=tiny trainer=debug trainer.eval_batch_size=32 loss=tinybert mapping=uniform trainer.max_steps=6
teacher=tiny student=tiny data=tiny trainer=debug trainer.eval_batch_size=32 loss=hard
experiment=tiny_ensemble trainer.max_steps=6
experiment=tiny_meta_kd trainer.max_steps=6
teacher=tiny student=copy3 student.layers=[0,1] data=tiny trainer=debug trainer.eval_batch_size=32 trainer.max_steps=20 loss=kd
CASES
