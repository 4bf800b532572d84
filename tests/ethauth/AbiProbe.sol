// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import "../../contracts/IAppAuth.sol";

/// Test-only: lets the C++ ABI codec be checked against the Solidity compiler's own encoder/decoder.
contract AbiProbe {
    /// Solidity decodes our calldata (reverting on malformed input) and re-encodes it.
    function echo(IAppAuth.AppBootInfo calldata b) external pure returns (bytes memory) {
        return abi.encode(b);
    }

    /// A fixed sample encoded by Solidity.
    function sample() external pure returns (bytes memory) {
        string[] memory adv = new string[](3);
        adv[0] = "INTEL-SA-00837";
        adv[1] = "";
        adv[2] = "a string that is longer than thirty-two bytes, spanning words";
        IAppAuth.AppBootInfo memory b = IAppAuth.AppBootInfo({
            appId: address(0x00000000000000000000000000000000DeaDBeef),
            composeHash: keccak256("compose"),
            instanceId: address(0),
            deviceId: bytes32(uint256(1)),
            mrAggregated: bytes32(uint256(2)),
            mrSystem: bytes32(uint256(3)),
            osImageHash: bytes32(uint256(4)),
            tcbStatus: "SWHardeningNeeded",
            advisoryIds: adv
        });
        return abi.encode(b);
    }

    function strings() external pure returns (string[] memory s, uint256 n) {
        s = new string[](3);
        s[0] = "one";
        s[1] = "two";
        s[2] = "three";
        n = 42;
    }
}
