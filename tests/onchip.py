"""tests/lib's protocol tests that run unchanged on every microcontroller build (tests/qemu's Cortex-M3, tests/rp2's
emulated Pico): `from onchip import *` in a folder whose conftest.py gives run_mp for its board collects them
there. What needs more than such a board offers (a TLS peer, a network) is not here."""
from test_certstore import (  # noqa: F401  (collected where imported)
    test_bad_sets_are_refused_with_a_clear_message_and_nothing_changes,
    test_empty_or_hostile_layouts_never_crash_boot,
    test_manifest_with_a_right_digest_but_wrong_types_is_invalid_never_a_crash,
    test_staging_the_active_set_again_writes_nothing,
)
from test_config import (  # noqa: F401
    test_bad_device_key_and_x509,
    test_every_bad_field_reported_once,
    test_good_config_gets_defaults,
    test_missing_and_broken_files,
)
from test_crypto import (  # noqa: F401
    test_b64_round_trip,
    test_b64decode_accepts_exactly_what_strict_base64_accepts,
    test_b64decode_refuses_what_a2b_base64_would_silently_accept,
    test_block_size_boundary_keys_match_cpython,
    test_rfc4231_vectors_on_the_unix_port as test_rfc4231_vectors,
)
from test_rootupdate import (  # noqa: F401
    test_an_oversized_push_is_refused_by_its_size_before_it_is_parsed,
    test_bad_pushes_are_refused_and_the_active_set_is_untouched,
    test_pem_and_der_payloads_are_staged_with_a_clear_reply,
    test_root_certs_report_and_expiry_watch,
    test_the_active_set_pushed_again_is_acknowledged_without_a_write,
)
from test_sas import (  # noqa: F401
    test_bad_input_is_refused_with_a_clear_message,
    test_derive_device_key_matches_dps_formula,
    test_device_token_is_scoped_to_the_device_and_expires_after_ttl,
    test_epoch_2000_clock_is_detected,
    test_hostname_and_device_id_checks_match_the_documented_rules,
    test_reference_token_from_iothub_facts,
    test_tokens_byte_identical_to_cpython_for_random_cases,
)
from test_topics import test_hostile_topics_never_raise, test_topics  # noqa: F401
from test_x509 import (  # noqa: F401
    test_iso_and_civil_dates_match_the_host,
    test_key_usage_without_cert_sign_is_seen,
    test_leaf_intermediate_and_dates,
    test_malformed_input_is_a_clean_value_error,
)
