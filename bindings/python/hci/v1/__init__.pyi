# Type stub of hci.v1: the generated stubs (protoc --pyi_out) of every proto file, re-exported.
from hci.v1 import backup_pb2 as backup_pb2
from hci.v1 import compute_pb2 as compute_pb2
from hci.v1 import event_pb2 as event_pb2
from hci.v1 import host_pb2 as host_pb2
from hci.v1 import image_pb2 as image_pb2
from hci.v1 import meta_pb2 as meta_pb2
from hci.v1 import network_pb2 as network_pb2
from hci.v1 import operation_pb2 as operation_pb2
from hci.v1 import storage_pb2 as storage_pb2
from hci.v1 import testing_pb2 as testing_pb2
from hci.v1.backup_pb2 import *
from hci.v1.compute_pb2 import *
from hci.v1.event_pb2 import *
from hci.v1.host_pb2 import *
from hci.v1.image_pb2 import *
from hci.v1.meta_pb2 import *
from hci.v1.network_pb2 import *
from hci.v1.operation_pb2 import *
from hci.v1.storage_pb2 import *
from hci.v1.testing_pb2 import *
