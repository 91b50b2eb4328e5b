"""Audits of public meta-gradient code: one adapter per repository, none of its code here.

Each module wraps one public repository's own functions as audit targets (module targets,
``metagrad.testing.module_target``, where the code is written against an ``nn.Module``),
runs ``check_meta_gradient`` on them, and runs an independent check of what the code
computes: the formula read off the code, evaluated here directly with dense
``torch.func`` Hessians on one of the battery's problems, against the repository's output.
The third-party code is imported from a checkout given on the command line, never copied:

    git clone https://github.com/aravindr93/imaml_dev /tmp/imaml_dev
    git -C /tmp/imaml_dev checkout 6a2a6697d8b7be72e098d524852eacb448935fbf
    python -m metagrad_bench.real_code.imaml_dev --repo /tmp/imaml_dev --out DIR

======================  ==============================  ==========================================
module                  repository @ commit             needs (besides torch)
======================  ==============================  ==========================================
``imaml_dev``           aravindr93/imaml_dev @ 6a2a669  numpy, scipy, matplotlib
``gbml``                sungyubkim/GBML @ 1577e17       numpy, higher
``maml_pytorch``        dragen1860/MAML-Pytorch         numpy
                        @ 98a00d4
``higher_example``      facebookresearch/higher         higher, pandas, matplotlib
                        @ 15a247a
``few_shot``            oscarknagg/few-shot @ 672de83   numpy, tqdm
``hypertorch``          prolearner/hypertorch           higher
                        @ 6241dfa
======================  ==============================  ==========================================

``bench/results/audit/real_code.md`` has the commands, verdicts and checks of a full run.
"""
