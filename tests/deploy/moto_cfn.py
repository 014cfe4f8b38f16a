"""What moto 5.2.1's CloudFormation lacks and real CloudFormation does, added for the coexistence
test (applied only inside `patched()`):

- Fn::Cidr (the template splits the VPC range with it);
- AWS::NoValue inside lists and objects: CloudFormation drops the element/key, moto keeps None;
- Fn::GetAtt TargetGroup.TargetGroupFullName (moto's target group has no attribute getter).

Resource types moto does not implement are skipped by moto itself with a warning (Secrets Manager
secrets, security-group egress rules, scaling policies, alarms, bucket policies, warm pools,
wait-condition handles): the test lists them so a reader knows what the moto run did not create."""
import contextlib
import ipaddress

from moto.cloudformation import parsing


@contextlib.contextmanager
def patched():
    original = parsing.clean_json

    def clean_json(resource_json, resources_map):
        if isinstance(resource_json, dict) and "Fn::Cidr" in resource_json:
            block, count, bits = (original(x, resources_map) for x in resource_json["Fn::Cidr"])
            net = ipaddress.ip_network(block)
            return [str(n) for n in net.subnets(new_prefix=net.max_prefixlen - int(bits))][:int(count)]
        if isinstance(resource_json, dict) and "Fn::GetAtt" in resource_json:
            name, attr = resource_json["Fn::GetAtt"]
            res = resources_map[name]
            if attr == "TargetGroupFullName" and res is not None and not hasattr(res, "get_cfn_attribute"):
                return res.arn.split(":")[-1]
        out = original(resource_json, resources_map)
        if isinstance(resource_json, list) and isinstance(out, list):
            out = [x for x in out if x is not None]
        elif isinstance(resource_json, dict) and isinstance(out, dict):
            out = {k: v for k, v in out.items() if v is not None}
        return out

    parsing.clean_json = clean_json
    try:
        yield
    finally:
        parsing.clean_json = original
