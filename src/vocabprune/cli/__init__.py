"""The `vocabprune` command: analyze, finetune and prune, each a job built from the layers below
(deploy, train, data, core). The entry point is `vocabprune.cli.main:main`."""
