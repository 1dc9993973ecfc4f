#!/usr/bin/env python3
"""A CloudFormation YAML template as JSON, its short-form tags in their long form.

    cfn-to-json.py TEMPLATE.yaml

`!Sub "..."` becomes {"Fn::Sub": "..."}, `!Ref X` {"Ref": "X"}, `!GetAtt A.B` {"Fn::GetAtt":
["A", "B"]}: what CloudFormation itself reads them as. tests/it/security.rs checks the template's
IAM policy with it, as it reads JSON only. PyYAML only (the tools venv has it).
"""

import json
import sys

import yaml


class Loader(yaml.SafeLoader):
    pass


def long_form(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


Loader.add_multi_constructor("!", long_form)

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        json.dump(yaml.load(f, Loader=Loader), sys.stdout, indent=1)
    print()
