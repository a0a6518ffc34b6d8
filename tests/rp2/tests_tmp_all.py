from test_certstore import *  # noqa
from test_config import *  # noqa
from test_crypto import *  # noqa
from test_outbox import *  # noqa
from test_rootupdate import *  # noqa
from test_sas import *  # noqa
from test_topics import *  # noqa
from test_x509 import *  # noqa
