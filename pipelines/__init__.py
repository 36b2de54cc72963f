"""DALI pipelines (installed as `ssrr.pipelines`): shards in, K augmented views per image out, on the device."""
